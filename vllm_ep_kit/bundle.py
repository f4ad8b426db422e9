"""``bundle``: what an air-gapped GPU host with torch (but no vLLM, FlashInfer or network) needs.

Everything is derived rather than guessed:
- FlashInfer: its Python package plus, for the comm JIT modules, the sources
  their JIT specs list and the headers those include (a scan of ``#include``
  lines over FlashInfer's own include directories), not the 258 MB of CUDA
  sources it ships.
- vLLM: its Python sources without compiled kernels (optional).
- Wheels: the distributions that importing the needed modules actually loads
  (traced in a fresh interpreter here), minus those the target already has,
  downloaded for the target's Python and platform.
The result is a folder with ``site/`` (to put on PYTHONPATH), ``wheels/`` and
``bootstrap.sh``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vllm_ep_kit.fresh_python import run_json

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)
FLASHINFER_COMM_SPECS = ("gen_comm_alltoall_module", "gen_moe_alltoall_module")
TRACE_MODULES = ("flashinfer.comm", "flashinfer.comm.mnnvl", "flashinfer.comm.trtllm_alltoall",
                 "flashinfer.comm.trtllm_moe_alltoall", "flashinfer.jit")


@dataclass
class BundlePlan:
    flashinfer_files: list[Path] = field(default_factory=list)
    flashinfer_root: Path | None = None
    vllm_root: Path | None = None
    distributions: dict[str, str] = field(default_factory=dict)  # name -> version to ship


def _package_root(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{name} is not installed here; install it to bundle it")
    return Path(spec.origin).parent


def flashinfer_jit_inputs(arch: str = "9.0a") -> tuple[list[Path], list[Path]]:
    """(sources, include dirs) of FlashInfer's comm JIT specs (read, not built)."""
    code = ("import json; from flashinfer.jit import comm; out = {'src': [], 'inc': []}\n"
            f"for name in {FLASHINFER_COMM_SPECS!r}:\n"
            "    spec = getattr(comm, name)()\n"
            "    out['src'] += [str(s) for s in spec.sources]\n"
            "    out['inc'] += [str(s) for s in (spec.extra_include_dirs or [])]\n"
            "print(json.dumps(out))")
    data = run_json(code, env={"FLASHINFER_CUDA_ARCH_LIST": arch})
    return [Path(p) for p in data["src"]], [Path(p) for p in data["inc"]]


def include_closure(sources: list[Path], search: list[Path]) -> set[Path]:
    """Every file reachable by #include from ``sources`` within ``search`` dirs."""
    todo, seen = list(sources), set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in INCLUDE.findall(path.read_text(errors="replace")):
            for base in (path.parent, *search):
                candidate = (base / name).resolve()
                if candidate.is_file():
                    todo.append(candidate)
                    break
    return seen


def flashinfer_files() -> tuple[Path, list[Path]]:
    root = _package_root("flashinfer")
    sources, extra = flashinfer_jit_inputs()
    data = root / "data"
    search = [*extra, data / "include", data / "csrc", data / "cutlass" / "include",
              data / "cutlass" / "tools" / "util" / "include", data / "spdlog" / "include"]
    files = {p for p in root.rglob("*") if p.is_file() and "data" not in p.relative_to(root).parts
             and "__pycache__" not in p.parts}
    files |= include_closure([s.resolve() for s in sources], [s.resolve() for s in search])
    return root, sorted(files)


def traced_distributions(modules: tuple[str, ...]) -> dict[str, str]:
    """Distributions whose modules get imported by importing ``modules`` (fresh interpreter)."""
    code = ("import importlib, importlib.metadata as md, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "tops = {n.split('.')[0] for n in sys.modules}\n"
            "owners = md.packages_distributions()\n"
            "dists = {d for t in tops for d in owners.get(t, [])}\n"
            "print(json.dumps({d: md.version(d) for d in sorted(dists)}))")
    return run_json(code, timeout_s=600)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(path: Path | None) -> set[str]:
    """Distribution names the target already has (``pip freeze`` / one name per line)."""
    if path is None:
        return set()
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(normalise(re.split(r"[=<>@ ;\[]", line, maxsplit=1)[0]))
    return names


def plan(include_vllm: bool, have: set[str], extra_modules: tuple[str, ...] = ()) -> BundlePlan:
    result = BundlePlan()
    result.flashinfer_root, result.flashinfer_files = flashinfer_files()
    modules = TRACE_MODULES + extra_modules
    if include_vllm:
        result.vllm_root = _package_root("vllm")
    shipped_as_source = {"flashinfer-python", "vllm"}
    result.distributions = {d: v for d, v in traced_distributions(modules).items()
                            if normalise(d) not in have and normalise(d) not in shipped_as_source}
    return result


def write(bundle: BundlePlan, out: Path, python_version: str, platform: str,
          jit_cache: Path | None = None, progress=print) -> dict:
    """Materialise ``bundle`` in ``out``; return a manifest (also written as JSON)."""
    site, wheels = out / "site", out / "wheels"
    for folder in (site, wheels):
        folder.mkdir(parents=True, exist_ok=True)
    root = bundle.flashinfer_root
    for path in bundle.flashinfer_files:
        target = site / "flashinfer" / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    progress(f"bundle: flashinfer: {len(bundle.flashinfer_files)} files")
    if bundle.vllm_root is not None:
        shutil.copytree(bundle.vllm_root, site / "vllm", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        progress("bundle: vllm Python sources copied (compiled kernels left out)")
    failed = {}
    for name, version in sorted(bundle.distributions.items()):
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--python-version", python_version,
               "--platform", platform, "--platform", "any", "-d", str(wheels),
               f"{name}=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode:
            failed[name] = result.stderr.strip().splitlines()[-1:] or ["failed"]
        progress(f"bundle: wheel {name}=={version}: {'ok' if not result.returncode else 'FAILED'}")
    if jit_cache is not None:
        shutil.copytree(jit_cache, out / "jit_cache", dirs_exist_ok=True)
    (out / "bootstrap.sh").write_text(BOOTSTRAP)
    manifest = {"python_version": python_version, "platform": platform,
                "flashinfer_files": len(bundle.flashinfer_files),
                "vllm": bundle.vllm_root is not None, "wheels": bundle.distributions,
                "wheel_failures": failed, "jit_cache": jit_cache is not None}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


BOOTSTRAP = """#!/usr/bin/env bash
# source this file: puts the bundle on PYTHONPATH (wheels unpacked to /tmp/vllm-ep-kit-site).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
site=${VLLM_EP_KIT_SITE:-/tmp/vllm-ep-kit-site}
mkdir -p "$site"
if compgen -G "$here/wheels/*.whl" > /dev/null; then
    python3 -m pip install --quiet --no-deps --no-index --target "$site" "$here"/wheels/*.whl
fi
if [ -d "$here/jit_cache" ]; then
    export FLASHINFER_WORKSPACE_BASE="$here/jit_cache"
fi
export PYTHONPATH="$here/site:$site${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=0
"""
