"""A persistent pool of ranks: start once per (world size, backend), run many tests.

``run_ranks`` pays process start, ``torch.distributed`` and vLLM import (and
on GPUs CUDA, NCCL and FlashInfer module loading) for every test.  A
:class:`RankPool` keeps one set of rank processes with the world group built
once and runs test functions in them one after another.  A task that asks for
a vLLM layout gets vLLM's parallel state built for it and torn down after it
(as under torchrun, ``rank.run_in_context``), so tests of every layout and
all-to-all backend of a world size share the processes, and no task sees
another task's vLLM groups or managers.  The failure contract is
``run_ranks``'s: a task that fails or hangs on any rank raises
:class:`RankFailures` with every rank's report (exceptions, stacks of stuck
ranks), and the pool is torn down (whole process groups killed, checked with
psutil) so the next test gets a fresh one.

Isolation between tasks: each rank restores ``os.environ`` after a task,
checks that vLLM's parallel state is gone and that vLLM's functions and
methods are the ones the task found (``vllm_isolation``), and then proves the
world group still works (an all-reduce); a rank that fails those checks
fails the task.
What does persist is process-wide state (imports, CUDA context, library
caches): tests measuring that ask ``run_ranks`` for ``fresh_processes``.

A pool's ranks fork from a fork server that has imported torch and vLLM once
(``rank_imports``), as vLLM's engine forks its workers after ``import vllm``: a
pool of four ranks costs one vLLM import, not four.  The server starts with the
environment this process had when the harness was imported (a test's
``monkeypatch.setenv`` does not stay in it) and each rank then takes this
process's environment as it is at the pool's start, as a spawned rank would.

Selected for every multi-rank test by ``VLLM_EP_KIT_POOL=1`` (pytest
``--ep-pool``), through ``run_ranks``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_ep_kit.harness import proctree
from vllm_ep_kit.harness.ports import open_rendezvous
from vllm_ep_kit.harness.rank import (
    RankContext,
    RankOutcome,
    RankSpec,
    child_environment,
    join_world,
    outcome_bytes,
    outcome_from_exception,
    prepare_rank_process,
    run_in_context,
)
from vllm_ep_kit.harness.skips import require_cpu_host_or_gpus
from vllm_ep_kit.harness.supervision import (
    POLL_S,
    LiveRank,
    RankFailures,
    Watchdog,
    collect,
    format_failures,
    order_failures,
    outcome_from_bytes,
    spawn_rank,
    teardown,
)
from vllm_ep_kit.reference.layout import ParallelLayout

POOL_ENV = "VLLM_EP_KIT_POOL"  # "1": run_ranks goes through a persistent pool
# What the fork server imports (the module's import is the preload; this process never
# imports it), and the variable that tells that module it is in the server.
PRELOAD = ("vllm_ep_kit.harness.rank_imports",)
SERVER_ENV = "VLLM_EP_KIT_FORK_SERVER"
# This process's environment before any test changed it: the fork server's.
_HARNESS_ENV = dict(os.environ)


def pool_enabled() -> bool:
    """The pool serves ``run_ranks`` now (``fresh_ranks`` unsets the variable meanwhile)."""
    return os.environ.get(POOL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def fresh_ranks(reason: str) -> Iterator[None]:
    """Inside the block every ``run_ranks`` spawns its own processes, pool or not, here
    and in the processes the block starts (``VLLM_EP_KIT_POOL`` is unset meanwhile).

    For a test whose outcome depends on process-wide state (device memory, library
    caches, a library's global registry) or on the spawning runner itself.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"reason={reason!r}: say why the ranks need fresh processes")
    previous_env = os.environ.pop(POOL_ENV, None)
    try:
        yield
    finally:
        if previous_env is not None:
            os.environ[POOL_ENV] = previous_env


def rank_context() -> multiprocessing.context.ForkServerContext:
    """The context the pools' ranks start from: the fork server, started on first use
    with ``PRELOAD`` imported and this process's environment from before any test.  The
    server dies with this process (its thread, to be exact: pools are made in the main
    thread)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    current = dict(os.environ)
    os.environ.clear()
    os.environ.update(_HARNESS_ENV)
    os.environ[SERVER_ENV] = str(os.getpid())
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(current)
    return ctx


@dataclass(frozen=True)
class PoolKey:
    world_size: int
    backend: str


# ----------------------------------------------------------------------------- rank side


def _isolation_check(ctx: RankContext, before: dict[str, Any]) -> dict[str, Any]:
    """Local half of the check: the world group is intact, no vLLM state is left and
    vLLM's code is as the task found it.  Returns the snapshot for the next task."""
    import torch.distributed as dist

    from vllm_ep_kit.harness import vllm_isolation

    if not dist.is_initialized() or dist.get_world_size() != ctx.world_size:
        raise RuntimeError("the task destroyed or replaced the world process group")
    if "vllm.distributed.parallel_state" in sys.modules:
        from vllm.distributed import parallel_state as ps

        if ps.model_parallel_is_initialized() or ps._WORLD is not None:
            raise RuntimeError(
                "the task left vLLM's parallel state built (the next task would inherit its groups)"
            )
    after = vllm_isolation.snapshot()
    changed = vllm_isolation.changes(before, after)
    if changed:
        raise RuntimeError(
            "the task changed vLLM's code and left it changed (the next task "
            "would run it; restore it, e.g. with patches.base.swapped): " + "; ".join(changed[:5])
        )
    return after


def _collective_check(ctx: RankContext) -> None:
    """Collective half, run only once every rank finished its task: the group still works."""
    import torch
    import torch.distributed as dist

    one = torch.ones(1, device=ctx.device)
    dist.all_reduce(one)
    if int(one.item()) != ctx.world_size:
        raise RuntimeError(f"world all-reduce gave {one.item()}, expected {ctx.world_size}")


def pool_rank_main(spec: RankSpec, conn: multiprocessing.connection.Connection) -> None:
    """A pooled rank: set up once, then run tasks from ``conn`` until told to stop."""
    ctx = prepare_rank_process(spec)
    try:
        join_world(spec, ctx)
        from vllm_ep_kit.harness.vllm_isolation import snapshot

        code = snapshot()
        conn.send(("ready", b""))
    except BaseException as exc:  # noqa: BLE001 (start-up failure is a report too)
        traceback.print_exc()
        conn.send(("ready", outcome_bytes(outcome_from_exception(exc))))
        os._exit(1)
    while True:
        message = conn.recv()
        if message is None:
            break
        if message[0] == "check":
            try:
                _collective_check(ctx)
                outcome = RankOutcome(status="ok")
            except BaseException as exc:  # noqa: BLE001 (a broken group is the report)
                outcome = outcome_from_exception(exc)
            conn.send((message, outcome_bytes(outcome)))
            continue
        _, task_id, fn, args, kwargs, layout, all2all_backend, (env_set, env_unset) = message
        ctx.heartbeat()
        saved_env = dict(os.environ)
        # The parent's environment as it is now, as a fresh rank would inherit it.
        for name in env_unset:
            os.environ.pop(name, None)
        os.environ.update(env_set)
        ctx.layout, ctx.vllm_config = layout, None
        try:
            value = run_in_context(fn, ctx, args, kwargs, layout, all2all_backend)
            code = _isolation_check(ctx, code)
            outcome = RankOutcome(status="ok", value=value)
        except BaseException as exc:  # noqa: BLE001 (the task's failure, skips too, is the report)
            outcome = outcome_from_exception(exc)
            if outcome.status == "error":
                traceback.print_exc()
        finally:
            ctx.layout, ctx.vllm_config = None, None
            os.environ.clear()
            os.environ.update(saved_env)
        conn.send((task_id, outcome_bytes(outcome)))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------- parent side


class PoolBroken(RuntimeError):
    """The pool was torn down; make a new one."""


class RankPool:
    """World-size many rank processes that run tasks until a failure or :meth:`close`."""

    def __init__(
        self, key: PoolKey, start_timeout_s: float = 300.0, env: dict[str, str] | None = None
    ) -> None:
        self.key = key
        self.tasks_run = 0
        self._ids = itertools.count()
        self._rendezvous = open_rendezvous(timeout_s=max(start_timeout_s, 60.0))
        self._workdir = Path(tempfile.mkdtemp(prefix="vllm-ep-kit-pool-"))
        ctx = rank_context()
        self._live: list[LiveRank] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        child_env = child_environment(env, self._workdir)
        self.closed = False
        self.run_id = proctree.new_run_id()
        self._started_env = dict(os.environ)  # what the ranks inherited
        try:
            for rank in range(key.world_size):
                spec = RankSpec(
                    fn=None,
                    args=(),
                    kwargs={},
                    rank=rank,
                    world_size=key.world_size,
                    workdir=str(self._workdir),
                    backend=key.backend,
                    master_addr=self._rendezvous.host,
                    master_port=self._rendezvous.port,
                    timeout_s=max(start_timeout_s, 60.0),
                    env=child_env,
                    inherit_env=self._started_env,
                    run_id=self.run_id,
                    parent_pid=os.getpid(),
                )
                parent_end, child_end = ctx.Pipe()
                self._live.append(
                    spawn_rank(
                        ctx,
                        pool_rank_main,
                        (spec, child_end),
                        rank,
                        self._workdir,
                        f"pool-rank{rank}",
                    )
                )
                child_end.close()
                self._conns.append(parent_end)
            self._await("ready", start_timeout_s, grace_s=30.0)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [item.pid for item in self._live]

    @property
    def alive(self) -> bool:
        """Every rank process still running (something outside may have killed one)."""
        return not self.closed and all(item.proc.exitcode is None for item in self._live)

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        layout: ParallelLayout | None = None,
        all2all_backend: str | None = None,
        timeout_s: float = 300.0,
        failure_grace_s: float = 30.0,
        **kwargs: Any,
    ) -> list[Any]:
        """``fn(ctx, *args, **kwargs)`` on every rank; values, or RankFailures (pool closed).

        With ``layout``, inside vLLM's parallel state built for this task only.
        """
        if self.closed:
            raise PoolBroken("this pool was torn down")
        if layout is not None and self.key.backend == "gloo":
            require_cpu_host_or_gpus(self.key.world_size)
        if layout is not None and layout.world_size != self.key.world_size:
            raise ValueError(
                f"layout={layout.describe()} needs {layout.world_size} ranks, "
                f"this pool has {self.key.world_size}"
            )
        task_id = next(self._ids)
        for conn in self._conns:
            conn.send(
                ("task", task_id, fn, args, kwargs, layout, all2all_backend, self._env_change())
            )
        outcomes = self._await(task_id, timeout_s, failure_grace_s)
        # Every rank is done: prove the world group still works before the next test.
        for conn in self._conns:
            conn.send(("check", task_id))
        self._await(("check", task_id), timeout_s, failure_grace_s)
        self.tasks_run += 1
        skipped = [o.message for o in outcomes if o.status == "skip"]
        if skipped:
            from vllm_ep_kit.harness.skips import skip_or_fail

            skip_or_fail("; ".join(sorted(set(skipped))))
        return [o.value for o in outcomes]

    def _env_change(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """What changed in this process's environment since the ranks started (a test's
        monkeypatch.setenv): set and unset for the task, as a fresh rank would see it."""
        now = dict(os.environ)
        changed = {k: v for k, v in now.items() if self._started_env.get(k) != v}
        removed = tuple(k for k in self._started_env if k not in now)
        return changed, removed

    def _await(
        self, tag: str | int | tuple[str, int], timeout_s: float, grace_s: float
    ) -> list[RankOutcome]:
        """Collect one message per rank; on any failure tear down and raise RankFailures."""
        got: dict[int, RankOutcome | None] = {}
        watchdog = Watchdog(self._workdir, timeout_s, grace_s)
        for item in self._live:
            item.report.outcome = None
            item.report.hung = ""
            (self._workdir / f"rank{item.report.rank}.beat").touch()
        while len(got) < len(self._live):
            waiting = [i for i in range(len(self._live)) if i not in got]
            ready = multiprocessing.connection.wait(
                [self._conns[i] for i in waiting] + [self._live[i].proc.sentinel for i in waiting],
                timeout=POLL_S,
            )
            for i in waiting:
                item, conn = self._live[i], self._conns[i]
                if conn in ready or conn.poll():
                    try:
                        message_tag, outcome = conn.recv()
                    except (EOFError, OSError):  # the rank died: its exit is the report
                        item.proc.join(timeout=1.0)
                        item.report.exit_code = item.proc.exitcode
                        item.report.seen_exit_at = time.time()
                        got[i] = None
                        watchdog.failed(i)
                        continue
                    if message_tag != tag:
                        continue
                    # Unpickled here, not by recv: a value this process cannot rebuild
                    # is that rank's failure (outcome_from_bytes), not the pool's crash.
                    received = outcome_from_bytes(outcome) or RankOutcome(status="ok")
                    got[i] = item.report.outcome = received
                    if received.status == "error":
                        watchdog.failed(i)
                elif item.proc.exitcode is not None:
                    item.report.exit_code = item.proc.exitcode
                    item.report.seen_exit_at = time.time()
                    got[i] = None
                    watchdog.failed(i)
            pending = [self._live[i] for i in range(len(self._live)) if i not in got]
            if watchdog.check(pending):
                break
        failed = watchdog.saw_failure or len(got) < len(self._live)
        if not failed:
            # not failed: every rank sent its outcome (a None there is a failure)
            return [o for i in range(len(self._live)) if (o := got[i]) is not None]
        reports = [item.report for item in self._live]
        self.close(keep_workdir=True)
        collect(reports, self._workdir)  # stacks of stuck ranks, log tails
        for i, report in enumerate(reports):
            report.outcome = got.get(i)
        failing = order_failures(reports)
        shutil.rmtree(self._workdir, ignore_errors=True)
        raise RankFailures(
            format_failures(failing, self.key.world_size, self.key.backend)
            + f"\n(the rank pool for {describe(self.key)} was torn down)",
            failing,
        )

    def close(self, keep_workdir: bool = False) -> None:
        """Stop the ranks (politely, then by killing their process groups); idempotent."""
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send(None)
        deadline = time.monotonic() + 5.0
        for item in self._live:
            item.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if item.proc.pid is not None:
                item.pgid = item.proc.pid
                for child in proctree.descendants(item.proc.pid):
                    item.seen.setdefault(child.pid, child)
        teardown(self._live, self.run_id)
        for conn in self._conns:
            conn.close()
        self._rendezvous.close()
        if not keep_workdir:  # a failed task's report still reads the rank logs
            shutil.rmtree(self._workdir, ignore_errors=True)


def describe(key: PoolKey) -> str:
    return f"{key.world_size} ranks, {key.backend}"


# ----------------------------------------------------------------------------- registry

_POOLS: dict[PoolKey, RankPool] = {}


def pooled_run(
    fn: Callable[..., Any],
    key: PoolKey,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout_s: float,
    failure_grace_s: float,
    layout: ParallelLayout | None = None,
    all2all_backend: str | None = None,
) -> list[Any]:
    """Run on the pool for ``key``, starting one if there is none, it was torn down, or one
    of its ranks died between tasks (killed from outside: not the next task's failure)."""
    pool = _POOLS.get(key)
    if pool is not None and not pool.alive:  # torn down, or a rank died between tasks
        pool.close()
        pool = None
    if pool is None:
        pool = _POOLS[key] = RankPool(key, start_timeout_s=max(timeout_s, 60.0))
    try:
        return pool.run(
            fn,
            *args,
            layout=layout,
            all2all_backend=all2all_backend,
            timeout_s=timeout_s,
            failure_grace_s=failure_grace_s,
            **kwargs,
        )
    finally:
        if pool.closed:
            _POOLS.pop(key, None)


def live_pools() -> list[RankPool]:
    return [pool for pool in _POOLS.values() if not pool.closed]


@atexit.register
def close_all() -> None:
    """Tear every pool down (pytest session end, interpreter exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.close()
