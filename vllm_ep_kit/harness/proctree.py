"""Killing rank process trees so that no outcome leaves a process behind.

Each rank starts its own process group (``os.setpgid(0, 0)``), so everything it
forks (compile workers, a stray ``subprocess``) shares that group even after
being re-parented to init.  A process can still leave the group (``setsid``, a
daemon's double fork), so every rank also carries its run's id in the
environment (``RUN_ENV``), which its descendants inherit: teardown kills the
groups, every recorded descendant, and every process whose environment names
the run, then verifies with psutil that nothing of the run is alive.
"""

from __future__ import annotations

import contextlib
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


RUN_ENV = "VLLM_EP_KIT_RUN_ID"  # set in every rank; its descendants inherit it


def new_run_id() -> str:
    return f"{os.getpid()}-{time.time_ns()}"


def processes_of_run(run_id: str) -> list[psutil.Process]:
    """Live processes (other than this one) whose environment carries ``RUN_ENV=run_id``.

    ``/proc/PID/environ`` is the environment a process was started with: a rank
    sets the variable before it starts anything, so its descendants have it
    whatever session or group they moved to.
    """
    return processes_with_env(RUN_ENV, run_id) if run_id else []


def processes_with_env(name: str, value: str) -> list[psutil.Process]:
    """Live processes other than this one started with ``name=value`` in their environment.

    A process caught inside ``execve`` shows an empty environment for a moment
    (or, to a user without CAP_SYS_PTRACE, refuses it): such a process is read
    again after a short wait rather than passed over, since a daemon that a
    rank leaves behind and that is starting a program at the scan is exactly
    the one teardown must not miss.
    """
    me = os.getpid()
    found, unsettled = [], [p for p in psutil.process_iter(["pid"]) if p.pid != me]
    for wait_s in (0.0, 0.01, 0.03, 0.1, 0.3):
        if not unsettled:
            break
        time.sleep(wait_s)
        again = []
        for proc in unsettled:
            match = _env_match(proc, name, value)
            if match is None:
                again.append(proc)
            elif match:
                found.append(proc)
        unsettled = again
    return found


def _env_match(proc: psutil.Process, name: str, value: str) -> bool | None:
    """Whether ``proc`` was started with ``name=value``; None while it cannot tell yet (an
    empty environment or a refusal from a process of this user: one inside ``execve``)."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        env = proc.environ()
        if env:
            return env.get(name) == value
        # Empty for good: kernel threads, or a program that wrote over its environment
        # (setproctitle does); these are not new. One in execve is.
        return None if _just_started(proc) else False
    except psutil.AccessDenied:
        try:
            return None if proc.uids().real == os.getuid() and _just_started(proc) else False
        except psutil.Error:
            return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return False


def _just_started(proc: psutil.Process, within_s: float = 5.0) -> bool:
    return time.time() - proc.create_time() < within_s


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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for proc in extra:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def wait_until_gone(
    pgids: Iterable[int], timeout_s: float = 10.0, run_id: str = ""
) -> list[psutil.Process]:
    """Kill and wait until no member of ``pgids`` nor process of ``run_id`` is alive;
    return survivors."""
    pgids = set(pgids)

    def alive() -> list[psutil.Process]:
        found = {p.pid: p for p in members_of_groups(pgids)}
        found.update((p.pid, p) for p in processes_of_run(run_id))
        return list(found.values())

    deadline = time.monotonic() + timeout_s
    survivors = alive()
    while survivors and time.monotonic() < deadline:
        kill_groups(pgids, survivors)
        psutil.wait_procs(survivors, timeout=0.2)
        survivors = alive()
    return survivors
