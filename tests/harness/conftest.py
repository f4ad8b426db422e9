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
