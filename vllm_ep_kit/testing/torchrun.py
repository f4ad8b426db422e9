"""Running the same tests under torchrun (multi-node MNNVL, env:// rendezvous).

Self-spawning ranks only works on one host.  On GB200 NVL72 racks torchrun
starts one process per GPU on every node; each process then runs pytest (or
``vllm-ep-kit check``) and ``run_ranks`` executes the test function in-process
for its own rank.  The default process group is created once per process and
kept across tests; vLLM's groups are built and destroyed per test.  Failures
surface in the rank's own pytest output; a hang is cut by faulthandler's
dump-and-exit timer, after which torchrun tears the job down.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from typing import Any, Callable

from vllm_ep_kit.layout import ParallelLayout
from vllm_ep_kit.testing.skips import skip_or_fail

SPAWN_ENV = "VLLM_EP_KIT_SPAWN"  # "1": spawn ranks even inside a torchrun job


def active() -> bool:
    """True inside a torchrun-launched process (and spawning is not forced)."""
    if os.environ.get(SPAWN_ENV) == "1":
        return False
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    )


def run_here(fn: Callable[..., Any], world_size: int, args: tuple, kwargs: dict, *,
             backend: str, timeout_s: float, layout: ParallelLayout | None,
             all2all_backend: str | None) -> list[Any]:
    import datetime

    import torch
    import torch.distributed as dist

    from vllm_ep_kit.testing.rank import RankContext, run_in_context

    have = int(os.environ["WORLD_SIZE"])
    if have != world_size:
        skip_or_fail(f"needs {world_size} ranks, this torchrun job has {have}")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=max(timeout_s, 60.0)))
    ctx = RankContext(rank, world_size, local_rank, backend, None, layout)

    def rearm() -> None:
        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback_later(timeout_s, exit=True, file=sys.stderr)

    ctx._on_beat = rearm
    rearm()
    try:
        value = run_in_context(fn, ctx, args, kwargs, layout, all2all_backend)
        dist.barrier()
    finally:
        faulthandler.cancel_dump_traceback_later()
    # Other ranks' values are not gathered: each process reports its own outcome.
    return [value if r == rank else None for r in range(world_size)]
