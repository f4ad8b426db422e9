"""pytest plugin (entry point ``pytest11``): capability markers and strict mode.

Markers::

    @pytest.mark.gpus(4)         # at least 4 CUDA GPUs visible
    @pytest.mark.nvlink          # NVLink peer access between all visible GPUs
    @pytest.mark.handle_exchange # the installed FlashInfer can pass POSIX-fd handles here
    @pytest.mark.ptrace          # pidfd_getfd between sibling processes works
    @pytest.mark.mnnvl_handles   # fabric or POSIX-fd GPU memory handles
    @pytest.mark.flashinfer      # flashinfer.comm imports
    @pytest.mark.vllm            # vllm imports
    @pytest.mark.fresh_ranks("why")  # run_ranks spawns, even under --ep-pool

An unmet marker skips with the probe's reason; ``--ep-strict`` (or
``VLLM_EP_KIT_STRICT=1``) turns those skips, and skips reported by ranks,
into failures, for CI jobs that must really run them.  ``--ep-pool`` runs
multi-rank tests in persistent rank pools; a test whose outcome depends on
process-wide state says so with ``fresh_ranks`` and its reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from vllm_ep_kit.harness import probes, torchrun
from vllm_ep_kit.harness.pool import POOL_ENV
from vllm_ep_kit.harness.skips import (
    STRICT_ENV,
    NotRunnableHere,
    skip_or_fail,
    strict_failure,
    strict_mode,
)

# Command-line flags that set an environment variable (spawned ranks inherit it), with
# the stash key keeping the variable's previous value for pytest_unconfigure.
_ENV_FLAGS = {
    "--ep-strict": (STRICT_ENV, pytest.StashKey[str | None]()),
    "--ep-pool": (POOL_ENV, pytest.StashKey[str | None]()),
}

MARKERS = {
    "gpus(n)": "needs at least n CUDA GPUs",
    "nvlink": "needs NVLink peer access between all visible GPUs",
    "handle_exchange": "needs the installed FlashInfer's POSIX-fd handle exchange to work "
    "here (SCM_RIGHTS; pidfd_getfd with CAP_SYS_PTRACE on older FlashInfer)",
    "ptrace": "needs pidfd_getfd between sibling processes (CAP_SYS_PTRACE)",
    "mnnvl_handles": "needs fabric or POSIX-fd GPU memory handle support",
    "flashinfer": "needs flashinfer.comm to import",
    "vllm": "needs vllm to import",
    "fresh_ranks(reason)": "its ranks run in processes of their own even under --ep-pool "
    "(the reason says which process-wide state the outcome depends on)",
}

_PROBE_FOR_MARKER = {
    "nvlink": probes.nvlink,
    "handle_exchange": probes.handle_exchange,
    "ptrace": probes.ptrace,
    "mnnvl_handles": probes.mnnvl_handles,
    "flashinfer": probes.flashinfer_comm,
    "vllm": probes.vllm,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllm-ep-kit")
    group.addoption(
        "--ep-strict",
        action="store_true",
        default=False,
        help="fail, rather than skip, tests whose required GPUs or "
        f"capabilities are missing (same as {STRICT_ENV}=1)",
    )
    group.addoption(
        "--ep-pool",
        action="store_true",
        default=False,
        help="run multi-rank tests in persistent rank pools, one per (world size, "
        "backend; vLLM layouts are built per test), torn down on failure "
        f"(same as {POOL_ENV}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    for flag, (env, previous) in _ENV_FLAGS.items():
        if config.getoption(flag):
            config.stash[previous] = os.environ.get(env)
            os.environ[env] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give the environment back (matters when pytest runs in-process, e.g. pytester)."""
    from vllm_ep_kit.harness import pool

    pool.close_all()
    for env, previous in _ENV_FLAGS.values():
        if previous in config.stash:
            value = config.stash[previous]
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


def unmet_requirements(item: pytest.Item) -> list[str]:
    """Reasons the item cannot run here, one per unmet marker."""
    reasons = []
    for mark in item.iter_markers(name="gpus"):
        need = mark.args[0] if mark.args else mark.kwargs.get("n", 1)
        # Under torchrun this node holds only its share of the ranks (one GPU each).
        need = torchrun.ranks_on_this_node(need)
        have = probes.gpu_count()
        if have < need:
            reasons.append(f"needs {need} CUDA GPUs, {have} visible")
    for name, probe in _PROBE_FOR_MARKER.items():
        if item.get_closest_marker(name) is not None:
            result = probe()
            if not result.ok:
                reasons.append(f"{name}: {result.detail}")
    return reasons


def pytest_runtest_setup(item: pytest.Item) -> None:
    reasons = unmet_requirements(item)
    if reasons:
        skip_or_fail("; ".join(reasons))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The harness's "not runnable here", raised in any phase of a test: a skip with its
    reason, or in strict mode a failure that says so (the harness never imports pytest)."""
    report = yield
    if call.excinfo is None or not call.excinfo.errisinstance(NotRunnableHere):
        return report
    reason = str(call.excinfo.value)
    if strict_mode():
        report.longrepr = strict_failure(reason)
    else:
        report.outcome = "skipped"
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), (line or 0) + 1, f"Skipped: {reason}")
    return report


def fresh_ranks_reason(item: pytest.Item) -> str | None:
    """The reason a test's ranks need processes of their own, None if the pool may serve."""
    mark = item.get_closest_marker("fresh_ranks")
    if mark is None:
        return None
    reason = mark.args[0] if mark.args else mark.kwargs.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.fresh_ranks needs its reason, e.g. "
            '@pytest.mark.fresh_ranks("measures device memory")'
        )
    return reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fresh_ranks_reason(item)  # a marker without its reason stops the run here


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    reason = fresh_ranks_reason(item)
    if reason is None:
        return (yield)
    from vllm_ep_kit.harness import pool

    with pool.fresh_ranks(reason):
        return (yield)
