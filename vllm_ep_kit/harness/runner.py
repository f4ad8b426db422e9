"""Run a function on N ranks and report every rank's fate, never hiding one.

``run_ranks(fn, world_size)`` spawns one process per rank (gloo on CPU, NCCL on
GPUs), joins them through a rendezvous store the parent holds open (see
``ports``), calls ``fn(ctx, *args)`` in each, and returns the ranks' return
values.  When anything goes wrong it raises :class:`RankFailures`, whose
message has one section per failing rank: its exception and traceback, its
exit code or the signal that killed it, or, for a rank the watchdog found
stuck, its all-thread Python stack.

Under ``torchrun`` (env:// rendezvous, one process per GPU on every node) the
same call runs ``fn`` in the current process for this process's rank instead
of spawning: see ``torchrun``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vllm_ep_kit.harness import proctree, torchrun
from vllm_ep_kit.harness.ports import open_rendezvous
from vllm_ep_kit.harness.rank import RankSpec, child_environment, rank_main
from vllm_ep_kit.harness.skips import require_cpu_host_or_gpus, require_gpus
from vllm_ep_kit.harness.supervision import (
    POLL_S,
    LiveRank,
    Watchdog,
    collect,
    conclude,
    exited_badly,
    result_file,
    spawn_rank,
    teardown,
)

# Public here too: ``X as X`` marks an explicit re-export (mypy's no_implicit_reexport).
from vllm_ep_kit.harness.supervision import RankFailures as RankFailures
from vllm_ep_kit.harness.supervision import RankReport as RankReport
from vllm_ep_kit.harness.supervision import signal_name as signal_name
from vllm_ep_kit.reference.layout import ParallelLayout


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str | None = None,
    timeout_s: float = 120.0,
    failure_grace_s: float = 5.0,
    layout: ParallelLayout | None = None,
    all2all_backend: str | None = None,
    master_port: int = 0,
    env: dict[str, str] | None = None,
    python_path: tuple[str, ...] | list[str] = (),
    fresh_processes: bool = False,
    start_timeout_s: float = 60.0,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(ctx, *args, **kwargs)`` on ``world_size`` ranks; return their values.

    ``timeout_s`` is the watchdog's limit on time without progress: a rank
    progresses when its set-up is done, after initialisation, and each time it
    calls ``ctx.heartbeat()``.  Start-up (interpreter, unpickling the function
    and its arguments, which imports their modules) may take
    ``max(timeout_s, start_timeout_s)`` from spawn.  ``failure_grace_s`` is how
    long the other ranks get to finish after one has failed before they are
    declared stuck.  With
    ``layout`` set, vLLM's parallel state (TP/DP/EP groups) is built first.
    Under ``VLLM_EP_KIT_POOL=1`` the ranks come from a persistent pool
    (``pool``), unless ``fresh_processes`` (a test measuring process-wide
    state, e.g. device memory or library caches) or ``env`` / ``python_path``
    / ``master_port`` ask for processes of their own.
    """
    if not callable(fn):
        raise TypeError(f"fn={fn!r}: expected a callable")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: expected an integer >= 1")
    if layout is not None and layout.world_size != world_size:
        raise ValueError(
            f"layout={layout.describe()} needs {layout.world_size} ranks, world_size={world_size}"
        )
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: expected 'gloo' or 'nccl'")
    # GPUs are needed on this host for the ranks that run here: all of them when
    # spawning, this node's share under torchrun (a multi-node job's world is larger).
    here = torchrun.ranks_on_this_node(world_size)
    if backend == "nccl":
        require_gpus(here)
    elif layout is not None:
        require_cpu_host_or_gpus(here)

    from vllm_ep_kit.harness import pool

    if (
        pool.pool_enabled()
        and not fresh_processes
        and not torchrun.active()
        and not master_port
        and not env
        and not python_path
    ):
        return pool.pooled_run(
            fn,
            pool.PoolKey(world_size, backend),
            args,
            kwargs,
            timeout_s,
            failure_grace_s,
            layout=layout,
            all2all_backend=all2all_backend,
        )
    if torchrun.active():
        return torchrun.run_here(
            fn,
            world_size,
            args,
            kwargs,
            backend=backend,
            timeout_s=timeout_s,
            layout=layout,
            all2all_backend=all2all_backend,
        )

    rendezvous = open_rendezvous(port=master_port, timeout_s=max(timeout_s, 60.0))
    workdir = tempfile.mkdtemp(prefix="vllm-ep-kit-ranks-")
    ctx = multiprocessing.get_context("spawn")
    live: list[LiveRank] = []
    run_id = proctree.new_run_id()
    child_env = child_environment(env, workdir)
    try:
        for rank in range(world_size):
            spec = RankSpec(
                fn=fn,
                args=args,
                kwargs=kwargs,
                rank=rank,
                world_size=world_size,
                workdir=workdir,
                backend=backend,
                master_addr=rendezvous.host,
                master_port=rendezvous.port,
                timeout_s=max(timeout_s, 60.0),
                layout=layout,
                all2all_backend=all2all_backend,
                env=child_env,
                python_path=tuple(str(p) for p in python_path),
                run_id=run_id,
                parent_pid=os.getpid(),
            )
            live.append(spawn_rank(ctx, rank_main, (spec,), rank, Path(workdir), f"rank{rank}"))
        _supervise(live, Path(workdir), timeout_s, failure_grace_s, max(timeout_s, start_timeout_s))
    finally:
        try:
            teardown(live, run_id)
        finally:
            rendezvous.close()
            reports = [item.report for item in live]
            collect(reports, Path(workdir))
            shutil.rmtree(workdir, ignore_errors=True)
    return conclude(reports, world_size, backend)


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def _supervise(
    live: list[LiveRank], workdir: Path, timeout_s: float, grace_s: float, start_limit_s: float
) -> None:
    """Poll until every rank exits, or the watchdog stops the ones left."""
    watchdog = Watchdog(workdir, timeout_s, grace_s, start_limit_s)
    while True:
        running = []
        for item in live:
            if item.proc.pid is not None and item.pgid is None:
                item.pgid = item.proc.pid  # rank_main makes pid its own group leader
            if item.proc.exitcode is None:
                for child in proctree.descendants(item.pid):
                    item.seen.setdefault(child.pid, child)
                running.append(item)
            elif item.report.exit_code is None:
                item.report.exit_code = item.proc.exitcode
                item.report.seen_exit_at = time.time()
                if exited_badly(item, workdir):
                    watchdog.failed(item.report.rank)
        if not running:
            return
        # Ranks that reported an outcome wait at the exit barrier: not stuck.
        pending = [it for it in running if not result_file(workdir, it.report.rank).exists()]
        if not pending and watchdog.saw_failure:
            return  # they wait for a rank that failed and will never arrive: done
        if watchdog.check(pending):
            return
        # Wakes as soon as a rank exits, so exit times are accurate.
        multiprocessing.connection.wait([it.proc.sentinel for it in running], timeout=POLL_S)
