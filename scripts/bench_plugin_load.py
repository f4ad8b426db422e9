"""Cost of the hotfix plugin in a vLLM process: seconds and modules that register() adds.

Each measurement runs in a fresh interpreter that has imported vLLM (as a vLLM process has
when it loads its general plugins), then calls ``vllm_ep_kit.patches.register()``.
``--kit DIR`` puts another source tree of this kit first on the path (e.g. a worktree of an
older commit), so two versions are measured side by side in one run:

    python scripts/bench_plugin_load.py --kit /tmp/old-kit --kit . --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROGRAM = r"""
import json, sys, time
import vllm
before = len(sys.modules)
start = time.perf_counter()
from vllm_ep_kit import patches
patches.register()
print(json.dumps({"seconds": time.perf_counter() - start, "modules": len(sys.modules) - before,
                  "kit": patches.__file__}))
"""


def measure(kit: str, disable: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(kit)}
    env.pop("VLLM_EP_KIT_PATCHES_DISABLE", None)
    if disable:
        env["VLLM_EP_KIT_PATCHES_DISABLE"] = disable
    # cwd=kit: ``python -c`` puts the working folder first on sys.path.
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
        cwd=os.path.abspath(kit),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kit",
        action="append",
        default=None,
        metavar="DIR",
        help="source tree of vllm-ep-kit to measure (repeatable; default .)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for disable in ("", "all"):
        for kit in args.kit or ["."]:
            runs = [measure(kit, disable) for _ in range(args.repeats)]
            print(
                f"kit={kit} VLLM_EP_KIT_PATCHES_DISABLE={disable or '(unset)'}: "
                f"register() {statistics.median(r['seconds'] for r in runs):.2f} s median "
                f"of {args.repeats}, +{statistics.median(r['modules'] for r in runs):.0f} "
                f"modules ({runs[0]['kit']})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
