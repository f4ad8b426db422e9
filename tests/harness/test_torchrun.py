"""The same rank functions under torchrun (env:// rendezvous), as on multi-node MNNVL."""

import os
import subprocess
import sys
from pathlib import Path

from vllm_ep_kit.testing import skip_or_fail

HERE = Path(__file__).parent


def test_run_ranks_runs_in_process_under_torchrun(tmp_path, no_leftovers):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["VLLM_EP_KIT_STRICT"] = "0"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(tmp_path / "logs"), "--tee", "3",
           "-m", "pytest", str(HERE / "torchrun_case.py"), "-q", "-p", "no:cacheprovider",
           "-rs", "-s"]
    result = subprocess.run(cmd, cwd=HERE.parent.parent, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # Both torchrun processes ran the suite: four in-process passes and a skip each.
    assert out.count("4 passed, 1 skipped") == 2, out[-4000:]
    assert out.count("needs 3 ranks, this torchrun job has 2") >= 2, out[-4000:]
    # The non-failing rank learnt of the other's failure too (not hidden behind its pass).
    assert "rank 0 saw the failure of rank 1" in out, out[-4000:]
    assert "rank 1 saw the failure of rank 1" in out, out[-4000:]


def test_nccl_world_under_torchrun(tmp_path, no_leftovers):
    """On GPU hosts: one torchrun process per GPU (up to 2), NCCL world, outcomes over gloo."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        skip_or_fail("needs 1 CUDA GPU, 0 visible")
    nproc = min(gpus, 2)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["VLLM_EP_KIT_STRICT"] = "0"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), "-m", "pytest", str(HERE / "torchrun_nccl_case.py"), "-q", "-p",
           "no:cacheprovider", "-s"]
    result = subprocess.run(cmd, cwd=HERE.parent.parent, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert out.count("3 passed") == nproc, out[-4000:]
    for rank in range(nproc):
        assert f"rank {rank} saw the NCCL-world failure of rank {nproc - 1}" in out, out[-4000:]
