#!/usr/bin/env python3
"""Time a pytest selection with a process per test and with the persistent rank pool.

    python3 scripts/pool_speedup.py [--warm-up] OUT_DIR [pytest arguments ...]

Runs ``pytest ARGS`` twice in fresh interpreters, one after the other on the
same machine: first without, then with ``--ep-pool``; writes both JUnit
reports and ``pool_speedup.json`` (wall times, outcome counts, ratio) to
OUT_DIR and prints one summary line.  The ratio only counts if both runs
have the same outcomes: a pool that skips or fails tests is not faster.

``--warm-up`` first runs the selection once, untimed, so on-disk caches
(Triton kernels, FlashInfer's JIT modules, bytecode) are equally warm for
both timed runs: otherwise the second run inherits what the first compiled
and the ratio flatters the pool.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from junit_report import outcomes


def timed_pytest(out: Path, label: str, args: list[str]) -> dict:
    junit = out / f"junit-{label}.xml"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, f"--junitxml={junit}", "-p", "no:cacheprovider"],
        check=False,
    )
    seconds = time.perf_counter() - start
    found = outcomes(junit) if junit.exists() else {}
    counts = {
        k: sum(v == k for v in found.values()) for k in ("passed", "failed", "skipped", "error")
    }
    return {
        "seconds": round(seconds, 1),
        "exit_code": proc.returncode,
        "counts": counts,
        "outcomes": found,
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    warm_up = argv[0] == "--warm-up"
    if warm_up:
        argv = argv[1:]
        if not argv:
            print("--warm-up: expected OUT_DIR after it", file=sys.stderr)
            return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    args = argv[1:]
    warm = timed_pytest(out, "warm-up", args) if warm_up else None
    per_test = timed_pytest(out, "process-per-test", args)
    pooled = timed_pytest(out, "pool", [*args, "--ep-pool"])
    same = per_test["outcomes"] == pooled["outcomes"]
    ratio = per_test["seconds"] / pooled["seconds"] if pooled["seconds"] else None
    report = {
        "pytest_args": args,
        "warm_up_s": warm["seconds"] if warm else None,
        "process_per_test": per_test,
        "pool": pooled,
        "same_outcomes": same,
        "speedup": round(ratio, 2) if ratio else None,
    }
    (out / "pool_speedup.json").write_text(json.dumps(report, indent=2))
    print(
        f"process per test: {per_test['seconds']} s {per_test['counts']}; pool: "
        f"{pooled['seconds']} s {pooled['counts']}; speedup {report['speedup']}x"
        + ("" if same else "; OUTCOMES DIFFER (see pool_speedup.json): ratio not valid")
    )
    return 0 if same and per_test["exit_code"] == pooled["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
