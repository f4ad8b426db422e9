"""Running the same tests and tools under torchrun (multi-node MNNVL, env:// rendezvous).

Self-spawning ranks only works on one host.  On GB200 NVL72 racks torchrun
starts one process per GPU on every node; each process then runs pytest (or
``vllm-ep-kit check`` / ``bench``) and ``run_ranks`` executes the function
in-process for its own rank.  The default process group is created once per
process and kept across calls; vLLM's groups are built and destroyed per call.

Every rank's outcome (value, exception, skip) is then exchanged over a gloo
group, so each process returns every rank's value, as a spawned run does, or
raises the same ``RankFailures`` naming the rank that failed first: a failure
on a rank of another node is not hidden behind this rank's pass.  A rank that
hangs is cut by faulthandler's dump-and-exit timer (``timeout_s`` without a
heartbeat), after which torchrun tears the job down.  A rank that leaves the job
before the exchange (``os._exit``, a signal) breaks the gloo gather on the others;
each rank marks its arrival in the job's store first, so the others name the ranks
that never arrived instead of showing gloo's "Connection closed by peer".
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from vllm_ep_kit.harness.skips import skip_or_fail
from vllm_ep_kit.reference.layout import ParallelLayout

if TYPE_CHECKING:
    import torch.distributed

    from vllm_ep_kit.harness.rank import RankOutcome

SPAWN_ENV = "VLLM_EP_KIT_SPAWN"  # "1": spawn ranks even inside a torchrun job


def active() -> bool:
    """True inside a torchrun-launched process (and spawning is not forced)."""
    if os.environ.get(SPAWN_ENV) == "1":
        return False
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    )


def ranks_on_this_node(world_size: int) -> int:
    """How many of a ``world_size``-rank run's ranks run on this host.

    All of them when spawning; under torchrun this node's processes
    (``LOCAL_WORLD_SIZE``), since the others run on other nodes.
    """
    if not active():
        return world_size
    return min(world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def job_world_size() -> int | None:
    """The torchrun job's WORLD_SIZE, or None outside one."""
    return int(os.environ["WORLD_SIZE"]) if active() else None


def is_lead() -> bool:
    """Whether this process prints and writes results: always outside torchrun, rank 0 in it."""
    return not active() or os.environ.get("RANK", "0") == "0"


def gpus_for_job(local_gpus: int) -> int:
    """The GPU count a plan should assume: the job's world size when every local rank has one.

    Raises ValueError when this node has GPUs but fewer than its ranks (one rank
    per GPU); 0 (gloo ranks) when the node has none.
    """
    local_ranks = ranks_on_this_node(int(os.environ["WORLD_SIZE"]))
    if local_gpus == 0:
        return 0
    if local_gpus < local_ranks:
        raise ValueError(
            f"this node runs {local_ranks} torchrun ranks but has {local_gpus} "
            "GPUs visible (one rank per GPU)"
        )
    return int(os.environ["WORLD_SIZE"])


# (the world group it was made for, the gloo group)
_exchange_group: tuple[
    torch.distributed.ProcessGroup | None, torch.distributed.ProcessGroup | None
] = (None, None)
_exchanges = 0  # run_ranks calls so far in this process: the same count on every rank
ARRIVAL_KEY = "vllm_ep_kit/backends/exchange/{call}/rank{rank}"


# How long a broken exchange waits for ranks that have not marked their arrival: a rank
# still finishing its part (a slower process on a loaded host) arrives within it, one that
# left the job never does. Without it a rank a moment late was reported as having left.
ARRIVAL_GRACE_S = 10.0


def _arrived(store: torch.distributed.Store, call: int, world_size: int) -> list[int]:
    """The ranks that marked their arrival at exchange ``call`` (best effort), waiting up to
    ``ARRIVAL_GRACE_S`` for all of them."""
    deadline = time.monotonic() + ARRIVAL_GRACE_S
    while True:
        try:
            keys = [ARRIVAL_KEY.format(call=call, rank=r) for r in range(world_size)]
            arrived = [r for r, key in enumerate(keys) if store.check([key])]
        except Exception:  # noqa: BLE001 (the store went with the job: nothing to tell)
            return list(range(world_size))
        if len(arrived) == world_size or time.monotonic() >= deadline:
            return arrived
        time.sleep(0.1)


def _lost_outcomes(
    outcome: RankOutcome, rank: int, world_size: int, missing: list[int], error: Exception
) -> list[RankOutcome]:
    """Outcomes when the gather broke: this rank's own, and the ranks that never arrived."""
    from vllm_ep_kit.harness.rank import RankOutcome

    outcomes = []
    for r in range(world_size):
        if r == rank:
            outcomes.append(outcome)
        elif r in missing:
            outcomes.append(
                RankOutcome(
                    status="error",
                    error_type="LeftTheJob",
                    at=0.0,
                    exit_code=1,
                    message="left the torchrun job without reporting its outcome (it exited or was "
                    "killed before the exchange; torchrun's log has its exit code)",
                )
            )
        else:  # arrived, but its outcome did not reach this rank
            outcomes.append(RankOutcome(status="ok"))
    if not missing:
        outcomes[rank] = RankOutcome(
            status="error",
            error_type=type(error).__name__,
            exit_code=1,
            message=f"the exchange of outcomes failed and every rank had arrived: {error}",
        )
    return outcomes


def _exchange(outcome: RankOutcome, world_size: int) -> Sequence[RankOutcome | None]:
    """Every rank's outcome, over a gloo group (usable after an NCCL failure).

    Each travels pickled once (``rank.outcome_bytes``): an outcome that cannot be
    pickled becomes an error outcome on its own rank instead of failing the
    gather there while the other ranks wait in it; one that cannot be unpickled
    here becomes that rank's error outcome.
    """
    import torch.distributed as dist

    from vllm_ep_kit.harness.rank import outcome_bytes
    from vllm_ep_kit.harness.supervision import outcome_from_bytes

    global _exchange_group, _exchanges
    world = dist.group.WORLD
    if _exchange_group[0] is not world:  # first call, or the world group was remade
        _exchange_group = (
            world,
            # every rank joins: never torch's NON_GROUP_MEMBER
            cast("dist.ProcessGroup", dist.new_group(backend="gloo"))
            if dist.get_backend() != "gloo"
            else world,
        )
    _exchanges += 1
    rank = dist.get_rank()
    store = dist.distributed_c10d._get_default_store()
    store.set(ARRIVAL_KEY.format(call=_exchanges, rank=rank), "1")
    gathered: list[Any] = [None] * world_size
    try:
        dist.all_gather_object(gathered, outcome_bytes(outcome), group=_exchange_group[1])
    except Exception as exc:  # noqa: BLE001 (gloo: "Connection closed by peer")
        missing = sorted(set(range(world_size)) - set(_arrived(store, _exchanges, world_size)))
        return _lost_outcomes(outcome, rank, world_size, missing, exc)
    return [outcome_from_bytes(data, where=f"rank {rank}'s process") for data in gathered]


def run_here(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    backend: str,
    timeout_s: float,
    layout: ParallelLayout | None,
    all2all_backend: str | None,
) -> list[Any]:
    import datetime

    import torch
    import torch.distributed as dist

    from vllm_ep_kit.harness.rank import (
        RankContext,
        RankOutcome,
        outcome_from_exception,
        run_in_context,
    )
    from vllm_ep_kit.harness.supervision import RankReport, conclude

    have = int(os.environ["WORLD_SIZE"])
    if have != world_size:
        skip_or_fail(f"needs {world_size} ranks, this torchrun job has {have}")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend, init_method="env://", timeout=datetime.timedelta(seconds=max(timeout_s, 60.0))
        )
    elif dist.get_backend() != backend:
        # The world group lives as long as the process: a call wanting another
        # backend would silently run on this one.
        skip_or_fail(
            f"needs a {backend} world; this torchrun process's default group is "
            f"{dist.get_backend()} (made by an earlier call): run it in its own "
            "torchrun job"
        )
    ctx = RankContext(rank, world_size, local_rank, backend, None, layout)

    def rearm() -> None:
        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback_later(timeout_s, exit=True, file=sys.stderr)

    ctx._on_beat = rearm
    rearm()
    try:
        try:
            outcome = RankOutcome(
                status="ok", value=run_in_context(fn, ctx, args, kwargs, layout, all2all_backend)
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 (reported to every rank below)
            outcome = outcome_from_exception(exc)
            if outcome.status == "error":
                # In this rank's log at once, even if a peer never reaches the exchange.
                traceback.print_exc()
                sys.stderr.flush()
        rearm()
        outcomes = _exchange(outcome, world_size)
    finally:
        faulthandler.cancel_dump_traceback_later()
    reports = [RankReport(rank=r, outcome=o) for r, o in enumerate(outcomes)]
    return conclude(reports, world_size, backend)
