"""Shared fixtures of the harness tests."""

import psutil
import pytest


def new_processes(before: set[int]) -> list[psutil.Process]:
    """Live descendants of this process not in ``before`` (multiprocessing's
    resource tracker excepted: it is a per-interpreter helper, not a rank)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid in before or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(proc.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        found.append(proc)
    return found


@pytest.fixture
def no_leftovers():
    """Assert that no process started during the test outlives it."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    extra = new_processes(before)
    assert not extra, f"processes left behind: {[(p.pid, p.cmdline()) for p in extra]}"


class DeadlineExceeded(AssertionError):
    """The code under test did not return in time (e.g. a watchdog that never fired)."""


@pytest.fixture
def deadline():
    """``with deadline(seconds):`` fails the test fast if the block runs longer.

    SIGALRM raises in the main thread, inside run_ranks' wait loop, so its own
    teardown still stops the ranks.  Without this, a watchdog that never fires is
    caught only by pytest-timeout, 15 minutes later.
    """
    import contextlib
    import signal

    @contextlib.contextmanager
    def bound(seconds: float):
        def expire(signum, frame):
            raise DeadlineExceeded(f"still running after {seconds:.0f} s")

        previous = signal.signal(signal.SIGALRM, expire)
        old_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if old_timer[0]:
                signal.setitimer(signal.ITIMER_REAL, *old_timer)

    return bound


# The harness tests of run_ranks' own processes (spawn, watchdog, teardown, nothing left
# behind) are about those processes: under --ep-pool they still get them.
OWN_PROCESSES = pytest.mark.fresh_ranks(
    "tests run_ranks' own rank processes: spawn, watchdog, teardown, nothing left behind"
)
