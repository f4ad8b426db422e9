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
import pickle
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from vllm_ep_kit.layout import ParallelLayout
from vllm_ep_kit.testing import proctree, torchrun
from vllm_ep_kit.testing.ports import open_rendezvous
from vllm_ep_kit.testing.rank import STACK_DUMP_SIGNAL, RankOutcome, RankSpec, rank_main
from vllm_ep_kit.testing.skips import skip_or_fail

LOG_TAIL_LINES = 40
POLL_S = 0.05
ABRUPT_HEAD_START_S = 1.0


@dataclass
class RankReport:
    """The parent's view of one rank after the run."""

    rank: int
    exit_code: int | None = None
    outcome: RankOutcome | None = None
    hung: str = ""  # why the watchdog stopped it, if it did
    stacks: str = ""
    log_tail: str = ""
    seen_exit_at: float | None = None  # wall-clock time the parent saw it exit
    after: int | None = None  # the rank that failed first, if this one failed later
    killed_at_teardown: bool = False  # still alive when the run ended (e.g. at the exit barrier)

    @property
    def failed_at(self) -> float:
        """When this rank failed, for ordering root cause before consequences.

        A rank that died without reporting (signal, ``os._exit``) is moved
        ``ABRUPT_HEAD_START_S`` earlier: its peers' "connection closed" errors
        follow its exit within milliseconds, and a crash is never caused by a
        peer's error, while the reverse is the usual story.
        """
        if self.outcome is not None and self.outcome.status == "error":
            return self.outcome.at
        if self.seen_exit_at is None:
            return float("inf")  # still running when stopped
        return self.seen_exit_at - ABRUPT_HEAD_START_S

    @property
    def failed(self) -> bool:
        if self.hung:
            return True
        if self.outcome is None:
            return True  # died or exited without reporting
        if self.outcome.status == "error":
            return True
        return self.exit_code not in (0, None) and not self.killed_at_teardown

    def headline(self) -> str:
        parts = []
        if self.hung:
            parts.append(f"stopped by watchdog: {self.hung}")
        if self.outcome is not None and self.outcome.status == "error":
            parts.append(f"raised {self.outcome.error_type}: {self.outcome.message}")
        if self.killed_at_teardown:
            pass  # the harness's own SIGKILL says nothing about the rank
        elif self.exit_code is not None and self.exit_code < 0:
            parts.append(f"killed by signal {signal_name(-self.exit_code)}")
        elif self.exit_code not in (None, 0):
            parts.append(f"exited with code {self.exit_code}")
        if not parts and self.outcome is None:
            parts.append(f"exited with code {self.exit_code} without reporting a result")
        if self.after is not None:
            parts.append(f"(after rank {self.after} failed first)")
        return "; ".join(parts)


class RankFailures(AssertionError):
    """One or more ranks failed; ``reports`` holds the failing ranks' details."""

    def __init__(self, message: str, reports: list[RankReport]):
        super().__init__(message)
        self.reports = reports

    @property
    def failed_ranks(self) -> list[int]:
        return [r.rank for r in self.reports]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class _Live:
    proc: multiprocessing.process.BaseProcess
    report: RankReport
    pgid: int | None = None
    # Descendants seen while running, as psutil objects: unlike bare pids they
    # refuse to signal a process that reused the pid after ours exited.
    seen: dict[int, psutil.Process] = field(default_factory=dict)


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
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(ctx, *args, **kwargs)`` on ``world_size`` ranks; return their values.

    ``timeout_s`` is the watchdog's limit on time without progress: a rank
    progresses when it starts, after initialisation, and each time it calls
    ``ctx.heartbeat()``.  ``failure_grace_s`` is how long the other ranks get
    to finish after one has failed before they are declared stuck.  With
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
            f"layout={layout.describe()} needs {layout.world_size} ranks, "
            f"world_size={world_size}"
        )
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: expected 'gloo' or 'nccl'")
    if backend == "nccl":
        _require_gpus(world_size)
    elif layout is not None:
        _require_cpu_host_or_gpus(world_size)

    from vllm_ep_kit.testing import pool

    if pool.pool_enabled() and not fresh_processes and not torchrun.active() \
            and not master_port and not env and not python_path:
        return pool.pooled_run(fn, pool.PoolKey(world_size, backend, layout, all2all_backend),
                               args, kwargs, timeout_s, failure_grace_s)
    if torchrun.active():
        return torchrun.run_here(fn, world_size, args, kwargs, backend=backend,
                                 timeout_s=timeout_s, layout=layout,
                                 all2all_backend=all2all_backend)

    rendezvous = open_rendezvous(port=master_port, timeout_s=max(timeout_s, 60.0))
    workdir = tempfile.mkdtemp(prefix="vllm-ep-kit-ranks-")
    ctx = multiprocessing.get_context("spawn")
    live: list[_Live] = []
    child_env = dict(env or {})
    child_env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off
    try:
        for rank in range(world_size):
            spec = RankSpec(fn=fn, args=args, kwargs=kwargs, rank=rank, world_size=world_size,
                            workdir=workdir, backend=backend, master_addr=rendezvous.host,
                            master_port=rendezvous.port, timeout_s=max(timeout_s, 60.0),
                            layout=layout, all2all_backend=all2all_backend, env=child_env,
                            python_path=tuple(str(p) for p in python_path))
            proc = ctx.Process(target=rank_main, args=(spec,), name=f"rank{rank}")
            proc.start()
            live.append(_Live(proc=proc, report=RankReport(rank=rank)))
        _supervise(live, Path(workdir), timeout_s, failure_grace_s)
    finally:
        _teardown(live)
        rendezvous.close()
        reports = [item.report for item in live]
        _collect(reports, Path(workdir))
        shutil.rmtree(workdir, ignore_errors=True)
    return _conclude(reports, world_size, backend)


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _require_gpus(world_size: int) -> None:
    have = _visible_gpus()
    if have < world_size:
        skip_or_fail(f"needs {world_size} CUDA GPUs, {have} visible")


def _require_cpu_host_or_gpus(world_size: int) -> None:
    """A gloo world with vLLM's parallel state, on a host that has GPUs.

    There vLLM picks its CUDA platform and binds rank r to ``cuda:r`` whatever
    the process-group backend (measured on 2x H200: 4 gloo ranks fail with
    "invalid device ordinal" on ranks 2 and 3), so the case needs a GPU per rank.
    """
    have = _visible_gpus()
    if 0 < have < world_size:
        skip_or_fail(f"vLLM's CUDA platform binds each of the {world_size} ranks to its own "
                     f"GPU, {have} visible (this gloo case runs on CPU-only hosts)")


def _supervise(live: list[_Live], workdir: Path, timeout_s: float, grace_s: float) -> None:
    """Poll until every rank exits, or the watchdog stops the ones left."""
    first_failure_at: float | None = None
    first_failed_rank: int | None = None
    while True:
        running = []
        for item in live:
            if item.proc.pid is not None and item.pgid is None:
                item.pgid = item.proc.pid  # rank_main makes pid its own group leader
            if item.proc.exitcode is None:
                for child in proctree.descendants(item.proc.pid):
                    item.seen.setdefault(child.pid, child)
                running.append(item)
            elif item.report.exit_code is None:
                item.report.exit_code = item.proc.exitcode
                item.report.seen_exit_at = time.time()
                if _exited_badly(item, workdir) and first_failure_at is None:
                    first_failure_at = time.monotonic()
                    first_failed_rank = item.report.rank
        if not running:
            return
        # Ranks that reported an outcome wait at the exit barrier: not stuck.
        pending = [it for it in running if not _result_file(workdir, it.report.rank).exists()]
        now = time.monotonic()
        if pending and first_failure_at is not None and now - first_failure_at > grace_s:
            _stop_stuck(pending, workdir,
                        f"still running {grace_s:.0f} s after rank {first_failed_rank} failed")
            return
        stale = [it for it in pending if now - _last_beat(workdir, it.report.rank) > timeout_s]
        if stale:
            _stop_stuck(pending, workdir, f"no progress for {timeout_s:.0f} s")
            return
        # Wakes as soon as a rank exits, so exit times are accurate.
        multiprocessing.connection.wait([it.proc.sentinel for it in running], timeout=POLL_S)


def _result_file(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.result"


def _exited_badly(item: _Live, workdir: Path) -> bool:
    if item.proc.exitcode != 0:
        return True
    outcome = _read_outcome(workdir, item.report.rank)
    return outcome is None or outcome.status == "error"


def _last_beat(workdir: Path, rank: int) -> float:
    """Heartbeat as a monotonic time (file mtimes are wall-clock)."""
    try:
        age = time.time() - (workdir / f"rank{rank}.beat").stat().st_mtime
    except FileNotFoundError:
        age = 0.0  # not started yet: the spawn itself is progress
    return time.monotonic() - max(age, 0.0)


def _stop_stuck(running: list[_Live], workdir: Path, why: str) -> None:
    """Dump the stuck ranks' Python stacks, then kill their process trees."""
    for item in running:
        item.report.hung = why
        try:
            os.kill(item.proc.pid, STACK_DUMP_SIGNAL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if all(_stack_file(workdir, it.report.rank).stat().st_size > 0 for it in running
               if _stack_file(workdir, it.report.rank).exists()):
            time.sleep(0.2)  # let the handler finish writing every thread
            return
        time.sleep(POLL_S)


def _stack_file(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.stacks"


def _teardown(live: list[_Live]) -> None:
    """Kill every rank's process group and wait until nothing of it is alive."""
    pgids = {item.pgid for item in live if item.pgid is not None}
    for item in live:
        item.report.killed_at_teardown = item.proc.exitcode is None
    stragglers = [proc for item in live for proc in item.seen.values()]
    proctree.kill_groups(pgids, stragglers)
    for item in live:
        item.proc.join(timeout=10)
        if item.report.exit_code is None:
            item.report.exit_code = item.proc.exitcode
    survivors = proctree.wait_until_gone(pgids)
    if survivors:
        raise RuntimeError(f"could not kill rank processes: {[p.pid for p in survivors]}")


def _read_outcome(workdir: Path, rank: int) -> RankOutcome | None:
    try:
        return pickle.loads(_result_file(workdir, rank).read_bytes())
    except (FileNotFoundError, EOFError, pickle.UnpicklingError):
        return None


def _collect(reports: list[RankReport], workdir: Path) -> None:
    for report in reports:
        report.outcome = _read_outcome(workdir, report.rank)
        stacks = _stack_file(workdir, report.rank)
        if report.hung and stacks.exists():
            report.stacks = stacks.read_text(errors="replace").strip()
        log = workdir / f"rank{report.rank}.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            report.log_tail = "\n".join(lines[-LOG_TAIL_LINES:])


def _conclude(reports: list[RankReport], world_size: int, backend: str) -> list[Any]:
    failed = sorted((r for r in reports if r.failed), key=lambda r: (r.failed_at, r.rank))
    if failed:
        for later in failed[1:]:
            later.after = failed[0].rank
        raise RankFailures(format_failures(failed, world_size, backend), failed)
    skipped = [r for r in reports if r.outcome and r.outcome.status == "skip"]
    if skipped:
        reasons = sorted({r.outcome.message for r in skipped})
        skip_or_fail("; ".join(reasons))
    return [r.outcome.value for r in reports]


def format_failures(failed: list[RankReport], world_size: int, backend: str) -> str:
    lines = [f"{len(failed)} of {world_size} ranks failed (backend={backend}), first to "
             f"fail: rank {failed[0].rank}; in order: "
             + ", ".join(f"rank {r.rank}" for r in failed)]
    for report in failed:
        lines.append(f"--- rank {report.rank}: {report.headline()} ---")
        if report.outcome is not None and report.outcome.traceback:
            lines.append(report.outcome.traceback.rstrip())
        if report.stacks:
            lines.append(f"Python stacks of rank {report.rank} when stopped:")
            lines.append(report.stacks)
        if report.outcome is None and report.log_tail:
            lines.append(f"last lines of rank {report.rank}'s output:")
            lines.append(report.log_tail)
    return "\n".join(lines)
