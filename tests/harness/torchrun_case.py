"""Run by test_torchrun.py under torchrun (not collected on its own)."""

import os

import pytest
import torch
import torch.distributed as dist

from vllm_ep_kit.harness import RankFailures, run_ranks


def rank_sum(ctx):
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    return {"pid": os.getpid(), "sum": t.item(), "rank": ctx.rank}


def test_in_process_under_torchrun():
    world = int(os.environ["WORLD_SIZE"])
    values = run_ranks(rank_sum, world, backend="gloo", timeout_s=60)
    mine = values[int(os.environ["RANK"])]
    assert mine["pid"] == os.getpid()  # ran here, nothing spawned
    assert mine["sum"] == sum(range(1, world + 1))
    # Every rank's value comes back, as from spawned ranks.
    assert [v["rank"] for v in values] == list(range(world))
    assert len({v["pid"] for v in values}) == world


def test_second_test_reuses_the_world_group():
    world = int(os.environ["WORLD_SIZE"])
    values = run_ranks(rank_sum, world, backend="gloo", timeout_s=60)
    assert values[int(os.environ["RANK"])]["sum"] == sum(range(1, world + 1))


def test_wrong_world_size_skips():
    run_ranks(rank_sum, int(os.environ["WORLD_SIZE"]) + 1, backend="gloo")


def rank_fails_on_last(ctx):
    if ctx.rank == ctx.world_size - 1:
        raise ValueError(f"planted failure on rank {ctx.rank}")
    return ctx.rank


def test_a_failure_on_one_rank_fails_every_rank():
    world = int(os.environ["WORLD_SIZE"])
    with pytest.raises(RankFailures) as info:
        run_ranks(rank_fails_on_last, world, backend="gloo", timeout_s=60)
    assert info.value.failed_ranks == [world - 1]
    assert f"planted failure on rank {world - 1}" in str(info.value)
    print(f"rank {os.environ['RANK']} saw the failure of rank {world - 1}")


def test_the_world_still_works_after_a_failure():
    world = int(os.environ["WORLD_SIZE"])
    assert run_ranks(rank_sum, world, backend="gloo", timeout_s=60)[0]["sum"] == sum(
        range(1, world + 1)
    )


def rank_returns_unpicklable_on_first(ctx):
    return (lambda: None) if ctx.rank == 0 else ctx.rank


def test_an_unpicklable_value_fails_its_rank_without_stalling_the_others():
    world = int(os.environ["WORLD_SIZE"])
    with pytest.raises(RankFailures, match="rank outcome could not be pickled") as info:
        run_ranks(rank_returns_unpicklable_on_first, world, backend="gloo", timeout_s=60)
    assert info.value.failed_ranks == [0]
