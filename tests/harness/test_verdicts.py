"""The harness's verdict, in process: how each rank's fate is classified, ordered and told.

Reports, outcomes and the files a rank leaves (result, heartbeat, stacks, log) are made
by hand in ``tmp_path``; time is a fake clock where a limit or an order depends on it;
the functions that stop and kill processes get tiny real ones (``sleep``). Each case
comes with its nearest neighbour that must be classified the other way.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from vllm_ep_kit.harness import proctree, supervision
from vllm_ep_kit.harness.rank import RankOutcome
from vllm_ep_kit.harness.skips import STRICT_ENV, NotRunnableHere
from vllm_ep_kit.harness.supervision import (
    LiveRank,
    RankFailures,
    RankReport,
    Watchdog,
    collect,
    conclude,
    exited_badly,
    format_failures,
    last_beat,
    log_tail,
    order_failures,
    outcome_from_bytes,
    read_outcome,
    signal_name,
    spawn_rank,
    stop_stuck,
    teardown,
)

# ----------------------------------------------------------------------------- helpers


def ok(value=None, at=0.0):
    return RankOutcome(status="ok", value=value, at=at)


def error(error_type="ValueError", message="bad", at=0.0, traceback="", exit_code=1):
    return RankOutcome(
        status="error",
        error_type=error_type,
        message=message,
        traceback=traceback,
        exit_code=exit_code,
        at=at,
    )


def skip(message):
    return RankOutcome(status="skip", message=message)


def write_result(workdir: Path, rank: int, outcome) -> None:
    (workdir / f"rank{rank}.result").write_bytes(pickle.dumps(outcome))


def set_beat(workdir: Path, rank: int, wall: float) -> None:
    beat = workdir / f"rank{rank}.beat"
    beat.touch()
    os.utime(beat, (wall, wall))


def arm(workdir: Path, rank: int) -> None:
    (workdir / f"rank{rank}.armed").touch()


class Clock:
    """Stands in for ``time`` in the supervision module: sleeping advances both clocks.

    Times are rounded to the nanosecond so that sums of polls land on exact deadlines.
    """

    def __init__(self, wall: float = 1_000_000.0, mono: float = 500.0) -> None:
        self.wall, self.mono = wall, mono
        self.slept: list[float] = []
        self.on_sleep = lambda: None

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        self.on_sleep()

    def advance(self, seconds: float) -> None:
        self.wall = round(self.wall + seconds, 9)
        self.mono = round(self.mono + seconds, 9)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(supervision, "time", fake)
    return fake


class Proc:
    """A ``subprocess.Popen`` behind the part of ``multiprocessing.Process`` the harness uses."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.joins: list[float | None] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        self.joins.append(timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)


@pytest.fixture
def spawn():
    """``spawn(*argv, **popen_kwargs)``: a process that is killed at the end of the test."""
    started: list[subprocess.Popen] = []

    def start(*argv: str, **kwargs) -> subprocess.Popen:
        popen = subprocess.Popen(argv, **kwargs)
        started.append(popen)
        return popen

    yield start
    for popen in started:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()


def live(popen: subprocess.Popen, rank: int, pgid: int | None = None) -> LiveRank:
    return LiveRank(proc=Proc(popen), report=RankReport(rank=rank), pgid=pgid)


def is_gone(pid: int, within_s: float = 2.0) -> bool:
    """Dead (or a zombie about to be reaped) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def sleeper_with_a_child(spawn) -> tuple[subprocess.Popen, int]:
    """A group leader (``sh``) and its ``sleep`` child in the same process group."""
    leader = spawn(
        "sh", "-c", "sleep 30 & echo $!; wait", start_new_session=True, stdout=subprocess.PIPE
    )
    assert leader.stdout is not None
    return leader, int(leader.stdout.readline())


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- failed


@pytest.mark.parametrize(
    "report, failed",
    [
        (RankReport(0, exit_code=0, outcome=ok()), False),
        (RankReport(0, exit_code=None, outcome=ok()), False),
        (RankReport(0, exit_code=0, outcome=skip("no GPU")), False),
        (RankReport(0, exit_code=1, outcome=ok()), True),
        (RankReport(0, exit_code=3, outcome=ok()), True),
        (RankReport(0, exit_code=-9, outcome=ok()), True),
        (RankReport(0, exit_code=-9, outcome=ok(), killed_at_teardown=True), False),
        (RankReport(0, exit_code=3, outcome=ok(), killed_at_teardown=True), False),
        (RankReport(0, exit_code=0, outcome=ok(), hung="no progress for 5 s"), True),
        (RankReport(0, exit_code=0, outcome=None), True),
        (RankReport(0, exit_code=None, outcome=None), True),
        (RankReport(0, exit_code=-9, outcome=None, killed_at_teardown=True), True),
        (RankReport(0, exit_code=0, outcome=error()), True),
        (RankReport(0, exit_code=None, outcome=error(), killed_at_teardown=True), True),
    ],
    ids=[
        "ok and exit 0 is a success",
        "ok and not yet exited is a success",
        "a skip and exit 0 is not a failure",
        "ok then exit 1 is a failure",
        "ok then exit 3 is a failure",
        "ok then killed by a signal is a failure",
        "ok then killed by the harness at teardown is a success",
        "ok and still alive at teardown whatever its code is a success",
        "ok but stopped by the watchdog is a failure",
        "exit 0 without an outcome is a failure",
        "no exit and no outcome is a failure",
        "no outcome and killed at teardown is a failure",
        "an error outcome with exit 0 is a failure",
        "an error outcome killed at teardown is a failure",
    ],
)
def test_which_reports_are_failures(report, failed):
    assert report.failed is failed


# ----------------------------------------------------------------------------- failed_at


def test_a_rank_that_raised_failed_when_it_raised_not_when_it_exited():
    report = RankReport(0, exit_code=1, outcome=error(at=50.0), seen_exit_at=100.0)
    assert report.failed_at == 50.0


def test_a_rank_that_raised_before_exiting_failed_when_it_raised():
    assert RankReport(0, outcome=error(at=50.0)).failed_at == 50.0


def test_a_rank_that_exited_without_raising_failed_a_second_before_its_exit_was_seen():
    assert RankReport(0, exit_code=-11, outcome=None, seen_exit_at=100.0).failed_at == 99.0
    assert RankReport(0, exit_code=3, outcome=ok(at=10.0), seen_exit_at=100.0).failed_at == 99.0


def test_a_rank_still_running_when_stopped_failed_last():
    assert RankReport(0, outcome=None, hung="x").failed_at == float("inf")
    assert RankReport(0, outcome=ok(at=10.0)).failed_at == float("inf")


# ----------------------------------------------------------------------------- headline


@pytest.mark.parametrize(
    "report, headline",
    [
        (
            RankReport(0, outcome=None, hung="no progress for 5 s"),
            "stopped by watchdog: no progress for 5 s",
        ),
        (
            RankReport(0, outcome=None, hung="stuck", exit_code=-9, killed_at_teardown=True),
            "stopped by watchdog: stuck",
        ),
        (
            RankReport(0, outcome=error("KeyError", "'k'"), exit_code=1),
            "raised KeyError: 'k'; exited with code 1",
        ),
        (
            RankReport(0, outcome=error("KeyError", "'k'"), exit_code=None),
            "raised KeyError: 'k'",
        ),
        (RankReport(0, outcome=ok(), exit_code=-11), "killed by signal SIGSEGV"),
        (RankReport(0, outcome=None, exit_code=-9), "killed by signal SIGKILL"),
        (RankReport(0, outcome=ok(), exit_code=-9, killed_at_teardown=True), ""),
        (RankReport(0, outcome=ok(), exit_code=3), "exited with code 3"),
        (RankReport(0, outcome=ok(), exit_code=0), ""),
        (RankReport(0, outcome=ok(), exit_code=None), ""),
        (
            RankReport(0, outcome=None, exit_code=0),
            "exited with code 0 without reporting a result",
        ),
        (
            RankReport(0, outcome=None, exit_code=-9, killed_at_teardown=True),
            "exited with code -9 without reporting a result",
        ),
        (
            RankReport(0, outcome=ok(), exit_code=3, after=0),
            "exited with code 3; (after rank 0 failed first)",
        ),
        (
            RankReport(0, outcome=None, hung="stuck", after=2),
            "stopped by watchdog: stuck; (after rank 2 failed first)",
        ),
        (
            RankReport(0, outcome=error("OSError", "gone"), hung="stuck", exit_code=-6, after=1),
            "stopped by watchdog: stuck; raised OSError: gone; killed by signal SIGABRT; "
            "(after rank 1 failed first)",
        ),
    ],
    ids=[
        "a stuck rank says why the watchdog stopped it",
        "a stuck rank does not blame the harness kill on itself",
        "an exception names its type and message and the exit code",
        "an exception alone names its type and message",
        "a negative exit code names the signal",
        "a signal without an outcome names the signal only",
        "the harness kill at teardown says nothing",
        "a positive exit code is stated",
        "exit code zero says nothing",
        "no exit code says nothing",
        "no outcome says the rank did not report",
        "no outcome and killed at teardown says the rank did not report",
        "a later failure names the first even when it is rank zero",
        "a later stuck rank names the first",
        "every part in order",
    ],
)
def test_the_headline_of_a_rank(report, headline):
    assert report.headline() == headline


def test_signal_names_are_readable_and_unknown_numbers_are_still_told():
    assert signal_name(signal.SIGSEGV) == "SIGSEGV"
    assert signal_name(200) == "signal 200"


# ----------------------------------------------------------------------------- RankFailures


def test_rank_failures_lead_with_the_first_failing_rank():
    first = RankReport(3, outcome=error("ValueError", "boom"))
    failures = RankFailures("the message", [first, RankReport(1, outcome=None)])
    assert isinstance(failures, AssertionError)
    assert str(failures) == "the message"
    assert failures.failed_ranks == [3, 1]
    assert failures.first_failure() is first
    assert failures.summary() == "rank 3: raised ValueError: boom"


def test_rank_failures_without_reports_summarise_their_first_line_or_their_type():
    failures = RankFailures("first line\nsecond line", [])
    assert failures.first_failure() is None
    assert failures.failed_ranks == []
    assert failures.summary() == "first line"
    assert RankFailures("", []).summary() == "RankFailures"


# ----------------------------------------------------------------------------- order


def test_failures_are_ordered_by_when_each_rank_failed_and_later_ones_name_the_first():
    reports = [
        RankReport(0, exit_code=1, outcome=error(at=12.0), seen_exit_at=13.0),
        RankReport(1, exit_code=0, outcome=ok(at=11.0), seen_exit_at=11.5),
        RankReport(2, exit_code=1, outcome=error(at=10.0), seen_exit_at=10.1),
        RankReport(3, outcome=None, hung="stuck", last_progress=5.0),
    ]
    failed = order_failures(reports)
    assert [r.rank for r in failed] == [2, 0, 3]
    assert [r.after for r in failed] == [None, 2, 2]
    assert reports[1].after is None


def test_a_crash_leads_the_errors_it_caused_up_to_a_second_later():
    crash = RankReport(1, exit_code=-11, outcome=None, seen_exit_at=10.9)
    peer = RankReport(0, exit_code=1, outcome=error(at=10.0), seen_exit_at=10.1)
    assert [r.rank for r in order_failures([peer, crash])] == [1, 0]
    late_crash = RankReport(1, exit_code=-11, outcome=None, seen_exit_at=11.1)
    assert [r.rank for r in order_failures([peer, late_crash])] == [0, 1]


def test_among_stuck_ranks_the_one_whose_progress_stopped_first_leads():
    reports = [
        RankReport(0, outcome=None, hung="stuck", last_progress=20.0),
        RankReport(1, outcome=None, hung="stuck", last_progress=10.0),
        RankReport(2, outcome=None, hung="stuck", last_progress=15.0),
    ]
    assert [r.rank for r in order_failures(reports)] == [1, 2, 0]


def test_a_failure_without_recorded_progress_counts_as_having_stopped_at_time_zero():
    reports = [
        RankReport(0, outcome=None, hung="stuck", last_progress=0.5),
        RankReport(1, outcome=None, hung="stuck", last_progress=None),
    ]
    assert [r.rank for r in order_failures(reports)] == [1, 0]


def test_failures_at_the_same_time_go_in_rank_order():
    reports = [
        RankReport(2, exit_code=1, outcome=error(at=10.0)),
        RankReport(0, exit_code=-9, outcome=None, seen_exit_at=11.0),
        RankReport(1, exit_code=1, outcome=error(at=10.0)),
    ]
    assert [r.rank for r in order_failures(reports)] == [0, 1, 2]


def test_no_failure_orders_to_nothing():
    assert order_failures([RankReport(0, exit_code=0, outcome=ok())]) == []


# ----------------------------------------------------------------------------- message


def test_the_message_has_a_header_and_one_section_per_failing_rank():
    raised = RankReport(
        2,
        exit_code=1,
        outcome=error("ValueError", "boom", traceback="Traceback:\n  raise boom\n\n"),
        log_tail="ignored: the traceback says it",
    )
    stuck = RankReport(
        0,
        outcome=None,
        hung="no progress for 5 s",
        stacks='Thread 0x1:\n  File "x.py"',
        log_tail="line a\nline b",
        after=2,
    )
    crashed = RankReport(1, exit_code=-11, outcome=ok(), after=2)
    silent = RankReport(3, exit_code=0, outcome=None, after=2)
    message = format_failures([raised, stuck, crashed, silent], 4, "gloo")
    assert message.splitlines() == [
        "4 of 4 ranks failed (backend=gloo), first to fail: rank 2; in order: "
        "rank 2, rank 0, rank 1, rank 3",
        "--- rank 2: raised ValueError: boom; exited with code 1 ---",
        "Traceback:",
        "  raise boom",
        "--- rank 0: stopped by watchdog: no progress for 5 s; (after rank 2 failed first) ---",
        "Python stacks of rank 0 when stopped:",
        "Thread 0x1:",
        '  File "x.py"',
        "last lines of rank 0's output:",
        "line a",
        "line b",
        "--- rank 1: killed by signal SIGSEGV; (after rank 2 failed first) ---",
        "--- rank 3: exited with code 0 without reporting a result; "
        "(after rank 2 failed first) ---",
    ]


def test_a_rank_that_reported_gets_no_log_tail_and_an_empty_traceback_no_line():
    reported = RankReport(1, exit_code=1, outcome=error("E", "m"), log_tail="noise")
    assert format_failures([reported], 2, "nccl") == (
        "1 of 2 ranks failed (backend=nccl), first to fail: rank 1; in order: rank 1\n"
        "--- rank 1: raised E: m; exited with code 1 ---"
    )


# ----------------------------------------------------------------------------- conclude


def test_when_no_rank_failed_every_value_comes_back_in_rank_order():
    reports = [RankReport(r, exit_code=0, outcome=ok(value=r * 10)) for r in range(3)]
    assert conclude(reports, 3, "gloo") == [0, 10, 20]


def test_a_rank_killed_at_teardown_after_reporting_still_returns_its_value():
    reports = [
        RankReport(0, exit_code=0, outcome=ok(value="a")),
        RankReport(1, exit_code=-9, outcome=ok(value="b"), killed_at_teardown=True),
    ]
    assert conclude(reports, 2, "gloo") == ["a", "b"]


def test_a_failure_raises_rank_failures_with_the_ranks_root_cause_first():
    reports = [
        RankReport(0, exit_code=1, outcome=error(at=20.0)),
        RankReport(1, exit_code=0, outcome=ok(value=1)),
        RankReport(2, exit_code=1, outcome=error("KeyError", "k", at=10.0)),
    ]
    with pytest.raises(RankFailures) as info:
        conclude(reports, 3, "gloo")
    assert info.value.failed_ranks == [2, 0]
    assert str(info.value) == format_failures([reports[2], reports[0]], 3, "gloo")
    assert "finished while" not in str(info.value)


def test_ranks_that_finished_while_others_were_stuck_are_named():
    reports = [
        RankReport(0, exit_code=-9, outcome=ok(), killed_at_teardown=True),
        RankReport(1, outcome=None, hung="no progress for 5 s", last_progress=1.0),
        RankReport(2, exit_code=1, outcome=error(at=10.0)),
        RankReport(3, exit_code=0, outcome=ok()),
    ]
    with pytest.raises(RankFailures) as info:
        conclude(reports, 4, "gloo")
    assert info.value.failed_ranks == [2, 1]
    assert str(info.value) == (
        format_failures(info.value.reports, 4, "gloo")
        + "\nfinished while the others were stuck: rank 0, rank 3"
        " (a collective the stuck ranks wait in that these never joined?)"
    )


def test_when_every_rank_is_stuck_no_rank_is_named_as_finished():
    reports = [RankReport(r, outcome=None, hung="stuck", last_progress=r) for r in range(2)]
    with pytest.raises(RankFailures) as info:
        conclude(reports, 2, "gloo")
    assert "finished while" not in str(info.value)


def test_skipping_ranks_skip_the_test_with_each_reason_once(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    reports = [
        RankReport(0, exit_code=0, outcome=skip("needs b")),
        RankReport(1, exit_code=0, outcome=skip("needs a")),
        RankReport(2, exit_code=0, outcome=skip("needs b")),
        RankReport(3, exit_code=0, outcome=ok()),
    ]
    with pytest.raises(NotRunnableHere) as info:
        conclude(reports, 4, "gloo")
    assert str(info.value) == "needs a; needs b"


def test_a_failure_wins_over_a_skip():
    reports = [
        RankReport(0, exit_code=0, outcome=skip("needs a")),
        RankReport(1, exit_code=3, outcome=None),
    ]
    with pytest.raises(RankFailures):
        conclude(reports, 2, "gloo")


# ----------------------------------------------------------------------------- outcomes


def test_an_outcome_survives_the_trip_through_its_file(tmp_path):
    write_result(tmp_path, 1, error("KeyError", "k", at=5.0, traceback="tb", exit_code=7))
    got = read_outcome(tmp_path, 1)
    assert got == error("KeyError", "k", at=5.0, traceback="tb", exit_code=7)


def test_no_result_file_or_an_empty_one_is_no_outcome(tmp_path):
    assert read_outcome(tmp_path, 0) is None
    (tmp_path / "rank0.result").write_bytes(b"")
    assert read_outcome(tmp_path, 0) is None
    assert outcome_from_bytes(b"") is None


def test_an_unreadable_result_is_the_ranks_error_naming_where_it_was_read():
    got = outcome_from_bytes(b"not a pickle", where="rank 2's process")
    assert got is not None
    assert (got.status, got.error_type, got.exit_code) == ("error", "UnpicklingError", 1)
    assert got.message.startswith(
        "the rank's result could not be unpickled in rank 2's process: UnpicklingError: "
    )


class Refuses:
    def __reduce__(self):
        return (refuse, ("no such class here",))


def refuse(why):
    raise ModuleNotFoundError(why)


def test_a_value_that_cannot_be_rebuilt_is_the_ranks_error_naming_the_exception(tmp_path):
    (tmp_path / "rank0.result").write_bytes(pickle.dumps(ok(value=Refuses())))
    got = read_outcome(tmp_path, 0)
    assert got is not None
    assert (got.status, got.error_type, got.exit_code) == ("error", "ModuleNotFoundError", 1)
    assert got.message == (
        "the rank's result could not be unpickled in the parent: "
        "ModuleNotFoundError: no such class here"
    )


def test_a_result_file_holding_something_else_is_the_ranks_type_error():
    got = outcome_from_bytes(pickle.dumps({"status": "ok"}))
    assert got == RankOutcome(
        status="error",
        error_type="TypeError",
        message="the rank's result file holds dict, not an outcome",
        exit_code=1,
        at=got.at if got else 0.0,
    )


# ----------------------------------------------------------------------------- exited badly


def test_a_nonzero_exit_is_bad_whatever_the_rank_reported(tmp_path):
    write_result(tmp_path, 0, ok())
    for code in (1, -9):
        item = LiveRank(proc=SimpleNamespace(exitcode=code), report=RankReport(0))
        assert exited_badly(item, tmp_path)


def test_exit_zero_is_bad_without_an_outcome_or_with_an_error_and_good_with_ok(tmp_path):
    item = LiveRank(proc=SimpleNamespace(exitcode=0), report=RankReport(1))
    assert exited_badly(item, tmp_path)
    write_result(tmp_path, 1, error())
    assert exited_badly(item, tmp_path)
    write_result(tmp_path, 1, ok())
    assert not exited_badly(item, tmp_path)
    write_result(tmp_path, 1, skip("why"))
    assert not exited_badly(item, tmp_path)


def test_a_rank_process_never_started_has_no_pid_and_says_which_rank():
    item = LiveRank(proc=SimpleNamespace(pid=None), report=RankReport(4))
    with pytest.raises(RuntimeError, match="rank 4: its process was never started"):
        _ = item.pid
    assert LiveRank(proc=SimpleNamespace(pid=123), report=RankReport(4)).pid == 123


# ----------------------------------------------------------------------------- collect, log tail


def test_collect_reads_each_ranks_outcome_log_and_the_stacks_of_stuck_ranks(tmp_path):
    write_result(tmp_path, 0, ok(value=7))
    (tmp_path / "rank0.stacks").write_text("not stuck: not shown")
    (tmp_path / "rank0.log").write_text("zero\n")
    (tmp_path / "rank1.stacks").write_bytes(b'\n  Thread 0x1:\n  File "\xff.py"\n\n')
    (tmp_path / "rank1.log").write_text("one a\none b\n")
    reports = [RankReport(0), RankReport(1, hung="stuck"), RankReport(2, hung="stuck")]
    collect(reports, tmp_path)
    assert reports[0].outcome == ok(value=7)
    assert (reports[0].stacks, reports[0].log_tail) == ("", "zero")
    assert reports[1].outcome is None
    assert reports[1].stacks == 'Thread 0x1:\n  File "\ufffd.py"'
    assert reports[1].log_tail == "one a\none b"
    assert (reports[2].outcome, reports[2].stacks, reports[2].log_tail) == (None, "", "")


def test_a_missing_log_has_an_empty_tail(tmp_path):
    assert log_tail(tmp_path / "rank0.log") == ""


def test_a_short_log_is_shown_whole(tmp_path):
    log = tmp_path / "rank0.log"
    log.write_text("first\nsecond\n")
    assert log_tail(log) == "first\nsecond"
    log.write_text("only\n")
    assert log_tail(log) == "only"


def test_a_long_log_shows_its_last_forty_lines(tmp_path):
    log = tmp_path / "rank0.log"
    lines = [f"line {i}" for i in range(100)]
    log.write_text("\n".join(lines) + "\n")
    assert log_tail(log) == "\n".join(lines[-40:])
    log.write_text("\n".join(lines[:40]))
    assert log_tail(log) == "\n".join(lines[:40])


def test_a_log_of_long_lines_shows_the_whole_lines_within_sixteen_thousand_bytes(tmp_path):
    log = tmp_path / "rank0.log"
    lines = [str(i) * 5000 for i in range(1, 6)]  # 5 lines of 5001 bytes
    log.write_text("\n".join(lines) + "\n")
    tail = log_tail(log)
    assert tail == "\n".join(lines[-3:])  # the 4th-last is cut by the byte cap: dropped


def test_one_line_longer_than_the_cap_shows_its_end_marked_as_cut(tmp_path):
    log = tmp_path / "rank0.log"
    line = "".join(f"{i:06d}" for i in range(4000))  # 24000 bytes, every slice distinct
    log.write_text(line)
    assert log_tail(log) == "[...]" + line[-16_000:]
    log.write_text(line[-16_000:])
    assert log_tail(log) == line[-16_000:]


def test_a_cut_line_is_dropped_even_when_a_single_whole_line_follows_it(tmp_path):
    log = tmp_path / "rank0.log"
    cut, whole = "a" * 10_000, "b" * 10_000
    log.write_text(cut + "\n" + whole + "\n")
    tail = log_tail(log)
    assert tail.endswith(whole)
    assert "a" not in tail


def test_a_log_that_is_not_utf8_is_still_shown(tmp_path):
    log = tmp_path / "rank0.log"
    log.write_bytes(b"caf\xe9\nend\n")
    assert log_tail(log) == "caf\ufffd\nend"


# ----------------------------------------------------------------------------- heartbeat


def test_the_last_beat_is_the_beat_files_age_before_now_on_the_monotonic_clock(tmp_path, clock):
    set_beat(tmp_path, 2, clock.wall - 7.0)
    assert last_beat(tmp_path, 2) == clock.mono - 7.0


def test_a_rank_without_a_beat_file_or_with_one_from_the_future_beats_now(tmp_path, clock):
    assert last_beat(tmp_path, 0) == clock.mono
    set_beat(tmp_path, 0, clock.wall + 5.0)
    assert last_beat(tmp_path, 0) == clock.mono


def test_the_last_beat_follows_the_real_clocks(tmp_path):
    set_beat(tmp_path, 0, time.time() - 100.0)
    assert abs(last_beat(tmp_path, 0) - (time.monotonic() - 100.0)) < 0.5


# ----------------------------------------------------------------------------- spawn


class FakeContext:
    def __init__(self, beat: Path) -> None:
        self.beat, self.made = beat, []

    def Process(self, target, args, name):
        proc = SimpleNamespace(target=target, args=args, name=name, beat_at_start=None)

        def start():
            proc.beat_at_start = self.beat.exists()

        proc.start = start
        self.made.append(proc)
        return proc


def test_spawning_a_rank_starts_its_process_and_its_watchdog_clock(tmp_path):
    context = FakeContext(tmp_path / "rank3.beat")
    target = print
    item = spawn_rank(context, target, ("spec",), 3, tmp_path, "rank3")
    [proc] = context.made
    assert (proc.target, proc.args, proc.name) == (target, ("spec",), "rank3")
    assert proc.beat_at_start is True
    assert item.proc is proc
    assert item.report == RankReport(rank=3)
    assert item.pgid is None and item.seen == {}


# ----------------------------------------------------------------------------- watchdog


def unarmed_rank(rank: int) -> LiveRank:
    """A rank stopped before its set-up: the watchdog sends it no signal."""
    return LiveRank(proc=SimpleNamespace(pid=None), report=RankReport(rank))


def test_the_watchdog_remembers_only_the_first_failure(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=60, grace_s=5)
    assert not watchdog.saw_failure
    assert (watchdog.first_failure_at, watchdog.first_failed_rank) == (None, None)
    watchdog.failed(2)
    clock.advance(1.0)
    watchdog.failed(0)
    assert watchdog.saw_failure
    assert (watchdog.first_failure_at, watchdog.first_failed_rank) == (500.0, 2)


def test_the_watchdog_stops_the_others_only_after_the_grace_period(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=60, grace_s=5)
    pending = [unarmed_rank(0), unarmed_rank(3)]
    for rank in (0, 3):
        set_beat(tmp_path, rank, clock.wall)
    watchdog.failed(1)
    clock.advance(5.0)
    assert watchdog.check(pending) is False
    assert [it.report.hung for it in pending] == ["", ""]
    clock.advance(0.001)
    assert watchdog.check(pending) is True
    why = "still running 5 s after rank 1 failed (before its set-up finished: no stacks to show)"
    assert [it.report.hung for it in pending] == [why, why]


def test_the_watchdog_has_nothing_to_stop_when_nothing_is_pending(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=1, grace_s=1)
    watchdog.failed(0)
    clock.advance(100.0)
    assert watchdog.check([]) is False


def test_one_rank_without_progress_for_the_limit_stops_every_pending_rank(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=5, grace_s=30)
    pending = [unarmed_rank(0), unarmed_rank(1)]
    set_beat(tmp_path, 0, clock.wall)
    set_beat(tmp_path, 1, clock.wall - 5.0)
    assert watchdog.check(pending) is False
    assert [it.report.hung for it in pending] == ["", ""]
    set_beat(tmp_path, 1, clock.wall - 6.0)
    assert watchdog.check(pending) is True
    why = "no progress for 5 s (before its set-up finished: no stacks to show)"
    assert [it.report.hung for it in pending] == [why, why]


def test_within_the_grace_period_a_rank_without_progress_is_still_stopped(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=5, grace_s=30)
    pending = [unarmed_rank(0)]
    set_beat(tmp_path, 0, clock.wall - 6.0)
    watchdog.failed(1)
    assert watchdog.check(pending) is True
    assert pending[0].report.hung.startswith("no progress for 5 s")


def test_before_its_set_up_a_rank_gets_the_start_up_limit(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=60, grace_s=30, start_limit_s=2)
    pending = [unarmed_rank(0)]
    set_beat(tmp_path, 0, clock.wall - 2.0)
    assert watchdog.check(pending) is False
    set_beat(tmp_path, 0, clock.wall - 3.0)
    assert watchdog.check(pending) is True
    assert pending[0].report.hung.startswith("no progress for 2 s ")


def test_after_its_set_up_a_rank_gets_the_progress_limit(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    watchdog = Watchdog(tmp_path, timeout_s=5, grace_s=30, start_limit_s=2)
    pending = [LiveRank(proc=SimpleNamespace(pid=1), report=RankReport(0))]
    arm(tmp_path, 0)
    set_beat(tmp_path, 0, clock.wall - 3.0)
    assert watchdog.check(pending) is False
    set_beat(tmp_path, 0, clock.wall - 6.0)
    assert watchdog.check(pending) is True
    assert pending[0].report.hung == "no progress for 5 s"


def test_without_a_start_up_limit_a_rank_gets_the_progress_limit_from_spawn(tmp_path, clock):
    watchdog = Watchdog(tmp_path, timeout_s=5, grace_s=30)
    pending = [unarmed_rank(0)]
    set_beat(tmp_path, 0, clock.wall - 4.0)
    assert watchdog.check(pending) is False
    set_beat(tmp_path, 0, clock.wall - 6.0)
    assert watchdog.check(pending) is True


# ----------------------------------------------------------------------------- stop_stuck


def test_a_stuck_rank_that_armed_the_handler_gets_the_stack_signal_and_one_that_did_not_none(
    tmp_path, spawn
):
    armed, unarmed = spawn("sleep", "30"), spawn("sleep", "30")
    items = [live(armed, 0), live(unarmed, 1)]
    arm(tmp_path, 0)
    stop_stuck(items, tmp_path, "no progress for 5 s")
    assert armed.wait(timeout=5) == -supervision.STACK_DUMP_SIGNAL  # sleep's default action
    assert unarmed.poll() is None
    assert items[0].report.hung == "no progress for 5 s"
    assert items[1].report.hung == (
        "no progress for 5 s (before its set-up finished: no stacks to show)"
    )


def test_a_stuck_rank_that_already_exited_is_not_an_error(tmp_path, clock, monkeypatch):
    def gone(pid, sig):
        raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "kill", gone)
    item = LiveRank(proc=SimpleNamespace(pid=99), report=RankReport(0))
    arm(tmp_path, 0)
    stop_stuck([item], tmp_path, "stuck")
    assert item.report.hung == "stuck"


def test_a_stuck_rank_records_the_wall_clock_time_of_its_last_progress(tmp_path, clock):
    items = [unarmed_rank(0), unarmed_rank(1)]
    set_beat(tmp_path, 0, clock.wall - 7.0)
    set_beat(tmp_path, 1, clock.wall - 2.0)
    expected = [clock.wall - 7.0, clock.wall - 2.0]
    stop_stuck(items, tmp_path, "stuck")
    assert [it.report.last_progress for it in items] == expected


def test_without_stack_files_stopping_waits_only_a_moment(tmp_path, clock):
    stop_stuck([unarmed_rank(0)], tmp_path, "stuck")
    assert clock.slept == [0.2]


def test_stopping_waits_for_every_stack_file_to_be_written(tmp_path, clock):
    (tmp_path / "rank0.stacks").write_text("x")
    (tmp_path / "rank1.stacks").write_text("")
    polls = []

    def write_after_ten_polls():
        polls.append(None)
        if len(polls) == 10:
            (tmp_path / "rank1.stacks").write_text("Thread 0x1")

    clock.on_sleep = write_after_ten_polls
    stop_stuck([unarmed_rank(0), unarmed_rank(1)], tmp_path, "stuck")
    assert clock.slept == [0.05] * 10 + [0.2]


def test_stopping_gives_up_on_a_stack_file_left_empty_after_three_seconds(tmp_path, clock):
    (tmp_path / "rank0.stacks").write_text("")
    start = clock.mono
    stop_stuck([unarmed_rank(0)], tmp_path, "stuck")
    assert clock.mono - start == pytest.approx(3.0)
    assert clock.slept == [0.05] * 60


# ----------------------------------------------------------------------------- teardown


def test_teardown_kills_a_running_rank_and_says_so_and_keeps_an_exited_ranks_code(spawn):
    running, exited = spawn("sleep", "30", start_new_session=True), spawn("sh", "-c", "exit 3")
    exited.wait()
    items = [live(running, 0, pgid=running.pid), live(exited, 1, pgid=exited.pid)]
    teardown(items, "")
    assert (items[0].report.killed_at_teardown, items[0].report.exit_code) == (True, -9)
    assert (items[1].report.killed_at_teardown, items[1].report.exit_code) == (False, 3)


def test_teardown_waits_a_bounded_time_for_each_rank_to_be_reaped(spawn):
    items = [live(spawn("sleep", "30", start_new_session=True), r) for r in range(2)]
    for item in items:
        item.pgid = item.pid
    teardown(items, "")
    assert [item.proc.joins for item in items] == [[10], [10]]


def test_teardown_keeps_an_exit_code_seen_while_running(spawn):
    exited = spawn("sh", "-c", "exit 3")
    exited.wait()
    item = live(exited, 0)
    item.report.exit_code = 5
    teardown([item], "")
    assert item.report.exit_code == 5


def test_teardown_kills_every_member_of_a_ranks_process_group(spawn):
    leader, child = sleeper_with_a_child(spawn)
    try:
        teardown([live(leader, 0, pgid=leader.pid)], "")
        assert is_gone(child)
    finally:
        kill_quietly(child)


def test_teardown_kills_a_rank_that_never_made_its_own_group(spawn):
    rank = spawn("sleep", "30")
    item = live(rank, 0, pgid=None)
    teardown([item], "")
    assert (item.report.killed_at_teardown, item.report.exit_code) == (True, -9)


def test_teardown_kills_a_descendant_seen_while_running_that_left_the_group(spawn):
    rank = spawn("true")
    rank.wait()
    escaped = spawn("sleep", "30", start_new_session=True)
    item = live(rank, 0, pgid=rank.pid)
    item.seen[escaped.pid] = psutil.Process(escaped.pid)
    teardown([item], "")
    assert escaped.wait(timeout=5) == -9


def test_teardown_kills_a_process_of_the_run_it_never_saw(spawn, monkeypatch):
    run_id = proctree.new_run_id()
    stranger = spawn(
        "sleep", "30", start_new_session=True, env={**os.environ, proctree.RUN_ENV: run_id}
    )
    waited = []
    real_wait = proctree.wait_until_gone

    def wait_until_gone(pgids, timeout_s=10.0, run_id=""):
        waited.append(run_id)
        return real_wait(pgids, timeout_s, run_id=run_id)

    monkeypatch.setattr(proctree, "wait_until_gone", wait_until_gone)
    teardown([], run_id)
    assert stranger.wait(timeout=5) == -9
    assert waited == [run_id]


def test_teardown_fails_loudly_naming_processes_it_could_not_kill(spawn, monkeypatch):
    monkeypatch.setattr(
        proctree, "wait_until_gone", lambda pgids, run_id="": [SimpleNamespace(pid=4242)]
    )
    with pytest.raises(RuntimeError, match=r"could not kill rank processes: \[4242\]"):
        teardown([], "")
