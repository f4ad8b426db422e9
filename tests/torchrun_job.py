"""A torchrun job on this host (``--standalone``), as each node of a multi-node job starts one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What torchrun sets in each process it starts: a test's own environment must not pass
# them on, or the job's processes would read this process's values.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun(
    nproc: int,
    *argv: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_dir: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node NPROC ARGV...``, its
    output captured; ``log_dir`` keeps each process's output there as well (``--tee 3``)."""
    job_env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    job_env.update(env or {})
    logs = ["--log-dir", str(log_dir), "--tee", "3"] if log_dir is not None else []
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            *logs,
            *argv,
        ],
        cwd=cwd,
        env=job_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
