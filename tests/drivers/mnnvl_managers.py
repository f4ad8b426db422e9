"""vLLM's FlashInfer NVLink managers as the EP-group tests drive them, named by backend.

The tests build a manager on the EP group's CPU group (as vLLM's
``CudaCommunicator`` does), make sure its workspace exists and clean it up.
The managers' entry points differ (two-sided:
``ensure_alltoall_workspace_initialized()``; one-sided: ``initialize(...)``);
each backend's transport class knows its own (``backends.mnnvl.ManagerTransport``).
"""

from __future__ import annotations

import contextlib

from vllm_ep_kit.backends.mnnvl import build_manager as _build
from vllm_ep_kit.backends.mnnvl import manager_backend_names, manager_transport
from vllm_ep_kit.patches.flashinfer_managers import WorkspaceShape


def manager_backends() -> list[str]:
    """The backends whose vLLM manager these tests drive (both FlashInfer NVLink ones)."""
    return manager_backend_names()


def build_manager(backend: str, cpu_group=None):
    """``backend``'s vLLM manager on ``cpu_group`` (default: the EP group's)."""
    return _build(manager_transport(backend).MANAGER_CLASS, cpu_group)


def ensure_workspace(manager, backend: str, shape: WorkspaceShape = WorkspaceShape()) -> bool:
    """Make sure the workspace exists, through the manager's own entry point."""
    return manager_transport(backend).ensure(manager, shape)


@contextlib.contextmanager
def mnnvl_on_dp_group():
    """Re-create the pre-fix behaviour (vLLM 0.18-0.19): the MNNVL communicator on
    the DP group's CPU group whatever group the manager was given.

    A deliberate mutant: tests run their EP-group check under it to prove the
    check fails when the fix of upstream PR 40893 is reverted.
    """
    from vllm.distributed import parallel_state as ps
    from vllm.distributed.device_communicators import mnnvl_compat

    original = mnnvl_compat.CustomCommunicator

    class DpGroupCommunicator(mnnvl_compat.CustomCommunicator):
        def __init__(self, group):
            super().__init__(ps.get_dp_group().cpu_group)

    mnnvl_compat.CustomCommunicator = DpGroupCommunicator  # type: ignore[misc]  # the mutant's swap
    try:
        yield
    finally:
        mnnvl_compat.CustomCommunicator = original  # type: ignore[misc]  # vLLM's class back
