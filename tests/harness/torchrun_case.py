"""Run by test_torchrun.py under torchrun (not collected on its own)."""

import os

import torch
import torch.distributed as dist

from vllm_ep_kit.testing import run_ranks


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


def test_second_test_reuses_the_world_group():
    world = int(os.environ["WORLD_SIZE"])
    values = run_ranks(rank_sum, world, backend="gloo", timeout_s=60)
    assert values[int(os.environ["RANK"])]["sum"] == sum(range(1, world + 1))


def test_wrong_world_size_skips():
    run_ranks(rank_sum, int(os.environ["WORLD_SIZE"]) + 1, backend="gloo")
