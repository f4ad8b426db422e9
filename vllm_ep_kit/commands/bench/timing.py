"""Timing: CUDA events after warm-up on GPUs, wall clock on CPU; medians of repeats.

Before every repeat the ranks synchronise their device and meet at a CPU
barrier, so a repeat measures one collective step from a common start, not a
rank's queue.  Each stage is bracketed by events, so dispatch and combine are
timed separately inside the same repeat as their total.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

Stage = tuple[str, Callable[[Any], Any]]


class _Marks:
    """Time stamps: CUDA events on GPUs, perf_counter on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def sync_ranks(cuda: bool, cpu_group) -> None:
    if cuda:
        torch.cuda.synchronize()
    dist.barrier(group=cpu_group)


def time_stages(
    stages: list[Stage],
    warmup: int,
    repeats: int,
    cuda: bool,
    cpu_group,
) -> dict[str, float]:
    """Median milliseconds of each stage and of their sum (key ``total``).

    A stage gets the previous stage's return value (the first gets None).
    """
    marks = _Marks(cuda)
    samples: dict[str, list[float]] = {name: [] for name, _ in stages}
    samples["total"] = []
    for index in range(warmup + repeats):
        sync_ranks(cuda, cpu_group)
        stamps = [marks.mark()]
        value = None
        for _, fn in stages:
            value = fn(value)
            stamps.append(marks.mark())
        if cuda:
            torch.cuda.synchronize()
        if index < warmup:
            continue
        for (name, _), (start, end) in zip(stages, itertools.pairwise(stamps), strict=True):
            samples[name].append(marks.ms(start, end))
        samples["total"].append(marks.ms(stamps[0], stamps[-1]))
    return {name: statistics.median(values) for name, values in samples.items()}


def peer_copy_gbps(mib: int, repeats: int, cpu_group) -> dict:
    """This GPU's write bandwidth to the next rank's GPU, every rank copying at once.

    The link limit for an all-to-all's bytes: each GPU pushes a buffer over
    NVLink while its neighbour does the same.  Needs peer access; the rank's
    process must see the peer GPU (one process per GPU, all GPUs visible).
    """
    if not torch.cuda.is_available():
        return {"gbps": None, "why": "no CUDA GPUs"}
    here = torch.cuda.current_device()
    peer = (here + 1) % torch.cuda.device_count()
    if peer == here:
        return {"gbps": None, "why": "only one GPU visible to the rank"}
    if not torch.cuda.can_device_access_peer(here, peer):
        return {"gbps": None, "why": f"cuda:{here} has no peer access to cuda:{peer}"}
    nbytes = mib << 20
    buffers = {
        "src": torch.empty(nbytes, dtype=torch.uint8, device=here),
        "dst": torch.empty(nbytes, dtype=torch.uint8, device=peer),
    }

    def copy(_):
        buffers["dst"].copy_(buffers["src"], non_blocking=True)

    result = time_stages(
        [("copy", copy)], warmup=3, repeats=repeats, cuda=True, cpu_group=cpu_group
    )
    torch.cuda.synchronize(peer)  # the copy ran on this device's stream; the peer's too
    buffers.clear()
    torch.cuda.empty_cache()
    return {
        "gbps": nbytes / (result["copy"] * 1e-3) / 1e9,
        "bytes": nbytes,
        "from": f"cuda:{here}",
        "to": f"cuda:{peer}",
    }
