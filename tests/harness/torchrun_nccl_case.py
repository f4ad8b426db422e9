"""Run by test_torchrun.py under torchrun on GPU hosts (not collected on its own).

NCCL world: the outcome exchange goes over a gloo side group, and a later call
asking for gloo is told that the process's world is NCCL instead of running on it.
"""

import os

import pytest
import torch
import torch.distributed as dist

from vllm_ep_kit.harness import RankFailures, run_ranks
from vllm_ep_kit.harness.skips import NotRunnableHere


def rank_cuda_sum(ctx):
    t = torch.tensor([float(ctx.rank + 1)], device=ctx.device)
    dist.all_reduce(t)
    return {"rank": ctx.rank, "sum": t.item(), "device": str(t.device)}


def rank_fails_after_a_collective(ctx):
    rank_cuda_sum(ctx)
    if ctx.rank == ctx.world_size - 1:
        raise ValueError(f"planted failure on rank {ctx.rank} after an NCCL all_reduce")
    return ctx.rank


def test_nccl_world_returns_every_rank():
    world = int(os.environ["WORLD_SIZE"])
    values = run_ranks(rank_cuda_sum, world, backend="nccl", timeout_s=120)
    assert dist.get_backend() == "nccl"
    assert [v["rank"] for v in values] == list(range(world))
    assert all(v["sum"] == sum(range(1, world + 1)) for v in values)
    assert values[int(os.environ["RANK"])]["device"] == f"cuda:{os.environ['LOCAL_RANK']}"


def test_nccl_failure_reaches_every_rank():
    world = int(os.environ["WORLD_SIZE"])
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_fails_after_a_collective, world, backend="nccl", timeout_s=120)
    assert info.value.failed_ranks == [world - 1]
    print(f"rank {os.environ['RANK']} saw the NCCL-world failure of rank {world - 1}")


def test_gloo_call_in_an_nccl_world_is_refused():
    with pytest.raises(
        NotRunnableHere,
        match="needs a gloo world; this torchrun process's default group is nccl",
    ):
        run_ranks(rank_cuda_sum, int(os.environ["WORLD_SIZE"]), backend="gloo")
