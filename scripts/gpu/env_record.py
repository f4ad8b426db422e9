#!/usr/bin/env python3
"""Write the environment record of a GPU run: what ran it, for docs/gpu-evidence.md.

    python3 scripts/gpu/env_record.py OUT.json --commit SHA -- COMMAND...

Run on the GPU host, in the environment the tests ran in (``run_with_bundle.sh
python3 scripts/gpu/env_record.py ...``).  It records the GPUs (model, count, driver,
from nvidia-smi), CUDA as torch was built for it, Python, torch, FlashInfer and vLLM
(``null`` where not installed), the commit of the working tree (the host may have no
git, so the caller passes it) and the command whose JUnit XML sits beside the record.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def gpus() -> tuple[list[str], str | None]:
    """(model of each visible GPU, driver version); ([], None) without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], None
    out = subprocess.run(
        [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line]
    return [name for name, _ in rows], (rows[0][1] if rows else None)


def version(distribution: str, module: str) -> str | None:
    """The installed version: the distribution's metadata, else the module's
    ``__version__`` (a bundle ships FlashInfer's package without its metadata)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(found, "__version__", None) or "unknown")


def record(commit: str, command: list[str]) -> dict[str, object]:
    import torch

    models, driver = gpus()
    if len(set(models)) > 1:
        raise SystemExit(f"env_record: mixed GPU models {sorted(set(models))}: one per record")
    return {
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "commit": commit,
        "gpu": models[0] if models else None,
        "gpu_count": len(models),
        "driver": driver,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flashinfer": version("flashinfer-python", "flashinfer"),
        "vllm": version("vllm", "vllm"),
        "command": " ".join(command),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the record (JSON)")
    parser.add_argument("--commit", required=True, help="the commit of the working tree")
    parser.add_argument("command", nargs="+", help="the command the JUnit XML came from")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(record(args.commit, args.command), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
