"""Killing rank process trees so that no outcome leaves a process behind.

Each rank starts its own process group (``os.setpgid(0, 0)``), so everything it
forks (compile workers, a stray ``subprocess``) shares that group even after
being re-parented to init.  Teardown kills the group, then any recorded
descendant that escaped it, and finally verifies with psutil that nothing of
the group is alive.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (empty if ``pid`` is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def members_of_groups(pgids: Iterable[int]) -> list[psutil.Process]:
    """Live processes whose process group is one of ``pgids``."""
    wanted = set(pgids)
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) in wanted and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return found


def kill_groups(pgids: Iterable[int], extra: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL whole process groups plus any listed stragglers."""
    for pgid in set(pgids):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in extra:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def wait_until_gone(pgids: Iterable[int], timeout_s: float = 10.0) -> list[psutil.Process]:
    """Kill and wait until no member of ``pgids`` is alive; return survivors."""
    pgids = set(pgids)
    deadline = time.monotonic() + timeout_s
    survivors = members_of_groups(pgids)
    while survivors and time.monotonic() < deadline:
        kill_groups(pgids, survivors)
        psutil.wait_procs(survivors, timeout=0.2)
        survivors = members_of_groups(pgids)
    return survivors
