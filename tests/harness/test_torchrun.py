"""The same rank functions under torchrun (env:// rendezvous), as on multi-node MNNVL."""

from pathlib import Path

import pytest

from tests.torchrun_job import torchrun
from vllm_ep_kit.harness import skip_or_fail
from vllm_ep_kit.harness.skips import NotRunnableHere

from .conftest import OWN_PROCESSES

pytestmark = OWN_PROCESSES

HERE = Path(__file__).parent


def test_run_ranks_runs_in_process_under_torchrun(tmp_path, no_leftovers):
    result = torchrun(
        2,
        *("-m", "pytest", str(HERE / "torchrun_case.py"), "-q", "-p", "no:cacheprovider"),
        *("-rs", "-s"),
        env={"VLLM_EP_KIT_STRICT": "0"},
        cwd=HERE.parent.parent,
        log_dir=tmp_path / "logs",
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # Both torchrun processes ran the suite: five in-process passes and a skip each.
    assert out.count("5 passed, 1 skipped") == 2, out[-4000:]
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
    result = torchrun(
        nproc,
        *("-m", "pytest", str(HERE / "torchrun_nccl_case.py"), "-q", "-p", "no:cacheprovider"),
        "-s",
        env={"VLLM_EP_KIT_STRICT": "0"},
        cwd=HERE.parent.parent,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert out.count("3 passed") == nproc, out[-4000:]
    for rank in range(nproc):
        assert f"rank {rank} saw the NCCL-world failure of rank {nproc - 1}" in out, out[-4000:]


@pytest.mark.parametrize("world", [2, 4])
def test_faults_under_torchrun_name_the_rank(tmp_path, world, no_leftovers):
    """A value the other processes cannot unpickle, and a rank leaving with os._exit(0),
    fail the others' runs naming that rank: not a raw ModuleNotFoundError, not gloo's
    "Connection closed by peer" RuntimeError that names no rank."""
    import json
    import time

    start = time.monotonic()
    result = torchrun(
        world,
        str(HERE / "torchrun_fault_case.py"),
        env={"FAULT_CASE_OUT": str(tmp_path)},
        cwd=HERE.parent.parent,
    )
    out = result.stdout + result.stderr
    assert time.monotonic() - start < 60 + 15 + 30, out[-4000:]  # timeout_s + 15 + start-up
    cases = [
        json.loads(line)
        for path in sorted(tmp_path.glob("rank*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    last = world - 1
    unpicklable = [c for c in cases if c["case"] == "unpicklable-elsewhere"]
    assert sorted(c["rank"] for c in unpicklable) == list(range(world)), out[-4000:]
    for case in unpicklable:
        if case["rank"] == last:  # its own value unpickles where it was made
            assert "values" in case, case
        else:
            assert case.get("failed_ranks") == [last], case
            assert "could not be unpickled in rank" in case["first"], case
            assert "ModuleNotFoundError" in case["first"], case
    left = [c for c in cases if c["case"] == "exit-0"]
    assert sorted(c["rank"] for c in left) == list(range(last)), out[-4000:]
    for case in left:
        assert case.get("failed_ranks") == [last], case
        assert "left the torchrun job without reporting its outcome" in case["first"], case


TORCHRUN_ENV = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "head",
    "MASTER_PORT": "29500",
}


def test_a_multi_node_job_needs_gpus_for_this_nodes_ranks_only(monkeypatch):
    """2 nodes x 4 GPUs: each node checks for its 4 ranks' GPUs, not the job's 8."""
    from vllm_ep_kit.harness import torchrun

    monkeypatch.delenv(torchrun.SPAWN_ENV, raising=False)
    assert torchrun.ranks_on_this_node(8) == 8 and not torchrun.active()  # spawning: all here
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    assert torchrun.active() and not torchrun.is_lead()
    assert torchrun.ranks_on_this_node(8) == 4
    assert torchrun.job_world_size() == 8
    assert torchrun.gpus_for_job(4) == 8  # the plan may assume one GPU per job rank
    assert torchrun.gpus_for_job(0) == 0  # CPU nodes: gloo
    with pytest.raises(ValueError, match="this node runs 4 torchrun ranks but has 2 GPUs"):
        torchrun.gpus_for_job(2)
    # And run_ranks asks this node for its 4 GPUs (on a host with fewer, it skips saying so).
    from vllm_ep_kit.harness import probes, run_ranks

    if probes.gpu_count() >= 4:
        pytest.skip("this host has 4 GPUs: run_ranks would start the job")
    monkeypatch.setenv("VLLM_EP_KIT_STRICT", "0")
    with pytest.raises(NotRunnableHere, match=f"needs 4 CUDA GPUs, {probes.gpu_count()} visible"):
        run_ranks(print, 8, backend="nccl")
