"""The parent's side of rank processes: reports, per-rank files, watchdog actions, teardown.

Shared by ``runner`` (processes per run) and ``pool`` (processes reused across
runs): what a rank's files say (result, heartbeat, stacks, log), how a stuck
rank is stopped (stack dump, then its process tree killed), how every rank's
process group is torn down, and how failures are ordered and reported (root
cause first).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from vllm_ep_kit.harness import proctree
from vllm_ep_kit.harness.rank import STACK_DUMP_SIGNAL, RankOutcome, armed_file
from vllm_ep_kit.harness.skips import skip_or_fail

LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 16_000  # one huge line must not make a huge report
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
    last_progress: float | None = None  # wall-clock time of its last heartbeat, if stopped

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

    def __init__(self, message: str, reports: list[RankReport]) -> None:
        super().__init__(message)
        self.reports: list[RankReport] = reports  # the failing ranks, root cause first

    @property
    def failed_ranks(self) -> list[int]:
        return [r.rank for r in self.reports]

    def first_failure(self) -> RankReport | None:
        """The rank that failed first (the likely root cause), as data."""
        return self.reports[0] if self.reports else None

    def summary(self) -> str:
        """One line: the first failing rank and what happened to it."""
        first = self.first_failure()
        if first is None:
            return str(self).splitlines()[0] if str(self) else type(self).__name__
        return f"rank {first.rank}: {first.headline()}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class LiveRank:
    """A rank process the parent supervises, and what it has learnt about it."""

    proc: multiprocessing.process.BaseProcess
    report: RankReport
    pgid: int | None = None
    # Descendants seen while running, as psutil objects: unlike bare pids they
    # refuse to signal a process that reused the pid after ours exited.
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The rank process's pid (``spawn_rank`` started it: it has one)."""
        pid = self.proc.pid
        if pid is None:
            raise RuntimeError(f"rank {self.report.rank}: its process was never started")
        return pid


def result_file(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.result"


def exited_badly(item: LiveRank, workdir: Path) -> bool:
    if item.proc.exitcode != 0:
        return True
    outcome = read_outcome(workdir, item.report.rank)
    return outcome is None or outcome.status == "error"


def last_beat(workdir: Path, rank: int) -> float:
    """Heartbeat as a monotonic time (file mtimes are wall-clock)."""
    try:
        age = time.time() - (workdir / f"rank{rank}.beat").stat().st_mtime
    except FileNotFoundError:
        age = 0.0  # not started yet: the spawn itself is progress
    return time.monotonic() - max(age, 0.0)


def spawn_rank(
    mp_context: multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext,
    target: Callable[..., object],
    args: tuple[Any, ...],
    rank: int,
    workdir: Path,
    name: str,
) -> LiveRank:
    """Start one rank process (the runner's and the pool's one start path: spawned, or
    forked from the pool's fork server).

    The watchdog's clock starts here: a rank stuck before its own first
    heartbeat (importing the test module, say) is stopped like any other.
    """
    (workdir / f"rank{rank}.beat").touch()
    proc = mp_context.Process(target=target, args=args, name=name)
    proc.start()
    return LiveRank(proc=proc, report=RankReport(rank=rank))


class Watchdog:
    """The one watchdog of the runner and the pool, polled while they wait for ranks.

    It stops the ranks still pending (stacks dumped, then killed at teardown)
    when one rank failed and the others are still running ``grace_s`` later,
    or when a pending rank made no progress for ``timeout_s``
    (``start_limit_s`` before its set-up finished, if given).
    """

    def __init__(
        self, workdir: Path, timeout_s: float, grace_s: float, start_limit_s: float | None = None
    ) -> None:
        self.workdir, self.timeout_s, self.grace_s = workdir, timeout_s, grace_s
        self.start_limit_s = start_limit_s
        self.first_failure_at: float | None = None
        self.first_failed_rank: int | None = None

    def failed(self, rank: int) -> None:
        """A rank failed (raised, or exited without its result)."""
        if self.first_failure_at is None:
            self.first_failure_at, self.first_failed_rank = time.monotonic(), rank

    @property
    def saw_failure(self) -> bool:
        return self.first_failure_at is not None

    def _limit(self, item: LiveRank) -> float:
        if self.start_limit_s is None or armed_file(self.workdir, item.report.rank).exists():
            return self.timeout_s
        return self.start_limit_s

    def check(self, pending: list[LiveRank]) -> bool:
        """Stop ``pending`` if it is time; True when it did (the caller stops waiting)."""
        if not pending:
            return False
        now = time.monotonic()
        if self.first_failure_at is not None and now - self.first_failure_at > self.grace_s:
            stop_stuck(
                pending,
                self.workdir,
                f"still running {self.grace_s:.0f} s after rank {self.first_failed_rank} failed",
            )
            return True
        for item in pending:
            limit = self._limit(item)
            if now - last_beat(self.workdir, item.report.rank) > limit:
                stop_stuck(pending, self.workdir, f"no progress for {limit:.0f} s")
                return True
        return False


def stop_stuck(running: list[LiveRank], workdir: Path, why: str) -> None:
    """Dump the stuck ranks' Python stacks; teardown then kills their process trees.

    Only ranks that installed the stack-dump handler get the signal: before
    that, SIGUSR1's default action would kill the rank and make it look like
    the root cause.
    """
    for item in running:
        item.report.hung = why
        item.report.last_progress = time.time() - (
            time.monotonic() - last_beat(workdir, item.report.rank)
        )
        if not armed_file(workdir, item.report.rank).exists():
            item.report.hung += " (before its set-up finished: no stacks to show)"
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(item.pid, STACK_DUMP_SIGNAL)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if all(
            stack_file(workdir, it.report.rank).stat().st_size > 0
            for it in running
            if stack_file(workdir, it.report.rank).exists()
        ):
            time.sleep(0.2)  # let the handler finish writing every thread
            return
        time.sleep(POLL_S)


def stack_file(workdir: Path, rank: int) -> Path:
    return workdir / f"rank{rank}.stacks"


def teardown(live: list[LiveRank], run_id: str) -> None:
    """Kill every rank's process group, every descendant seen and every process of
    ``run_id`` (those that left the group), and wait until nothing of it is alive."""
    pgids = {item.pgid for item in live if item.pgid is not None}
    for item in live:
        item.report.killed_at_teardown = item.proc.exitcode is None
    stragglers = [proc for item in live for proc in item.seen.values()]
    proctree.kill_groups(pgids, stragglers + proctree.processes_of_run(run_id))
    for item in live:  # a rank stopped before its set-up never made its own group
        if item.proc.exitcode is None:
            item.proc.kill()
    for item in live:
        item.proc.join(timeout=10)
        if item.report.exit_code is None:
            item.report.exit_code = item.proc.exitcode
    survivors = proctree.wait_until_gone(pgids, run_id=run_id)
    if survivors:
        raise RuntimeError(f"could not kill rank processes: {[p.pid for p in survivors]}")


def read_outcome(workdir: Path, rank: int) -> RankOutcome | None:
    """The rank's outcome; ``None`` if it wrote none; an error outcome if it cannot be read.

    A value can pickle in the rank and still fail to unpickle here (a class the
    parent cannot import, a constructor raising): that is the rank's failure,
    named, not a stray exception from the harness.
    """
    try:
        data = result_file(workdir, rank).read_bytes()
    except FileNotFoundError:
        return None
    return outcome_from_bytes(data)


def outcome_from_bytes(data: bytes, where: str = "the parent") -> RankOutcome | None:
    """Unpickle a rank's outcome, turning any failure into an error outcome."""
    if not data:
        return None
    try:
        outcome = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 (whatever unpickling raises is the report)
        return RankOutcome(
            status="error",
            error_type=type(exc).__name__,
            message=f"the rank's result could not be unpickled in {where}: "
            f"{type(exc).__name__}: {exc}",
            exit_code=1,
        )
    if not isinstance(outcome, RankOutcome):
        return RankOutcome(
            status="error",
            error_type="TypeError",
            message=f"the rank's result file holds {type(outcome).__name__}, not an outcome",
            exit_code=1,
        )
    return outcome


def collect(reports: list[RankReport], workdir: Path) -> None:
    for report in reports:
        report.outcome = read_outcome(workdir, report.rank)
        stacks = stack_file(workdir, report.rank)
        if report.hung and stacks.exists():
            report.stacks = stacks.read_text(errors="replace").strip()
        report.log_tail = log_tail(workdir / f"rank{report.rank}.log")


def log_tail(log: Path) -> str:
    """The last ``LOG_TAIL_LINES`` lines of a rank's log, at most ``LOG_TAIL_BYTES``."""
    try:
        with open(log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    if size > len(data) and len(lines) > 1:
        lines = lines[1:]  # the first line read is a fragment of a longer one
    tail = "\n".join(lines[-LOG_TAIL_LINES:])
    if size > len(data) and len(lines) == 1:
        tail = "[...]" + tail  # one line longer than the cap: its end
    return tail


def format_failures(failed: list[RankReport], world_size: int, backend: str) -> str:
    lines = [
        f"{len(failed)} of {world_size} ranks failed (backend={backend}), first to "
        f"fail: rank {failed[0].rank}; in order: " + ", ".join(f"rank {r.rank}" for r in failed)
    ]
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


def order_failures(reports: list[RankReport]) -> list[RankReport]:
    """The failed ranks, root cause first; each later one records who failed first."""
    # Among ranks the watchdog stopped, the one whose progress stopped first leads.
    failed = sorted(
        (r for r in reports if r.failed),
        key=lambda r: (r.failed_at, r.last_progress or 0.0, r.rank),
    )
    for later in failed[1:]:
        later.after = failed[0].rank
    return failed


def conclude(reports: list[RankReport], world_size: int, backend: str) -> list[Any]:
    """Every rank's value, or ``RankFailures`` (root cause first), or a skip with the reasons."""
    failed = order_failures(reports)
    if failed:
        message = format_failures(failed, world_size, backend)
        finished = [r.rank for r in reports if not r.failed and r.outcome is not None]
        if finished and any(r.hung for r in failed):
            message += (
                "\nfinished while the others were stuck: "
                + ", ".join(f"rank {rank}" for rank in finished)
                + " (a collective the stuck ranks wait in that these never joined?)"
            )
        raise RankFailures(message, failed)
    skipped = [r.outcome for r in reports if r.outcome and r.outcome.status == "skip"]
    if skipped:
        skip_or_fail("; ".join(sorted({outcome.message for outcome in skipped})))
    values = []
    for report in reports:  # none failed: each reported an outcome (``RankReport.failed``)
        assert report.outcome is not None, f"rank {report.rank}: no outcome, not failed"
        values.append(report.outcome.value)
    return values
