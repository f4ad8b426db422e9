"""The tests' vocabulary for vLLM's two FlashInfer NVLink managers ("kinds").

The EP-group tests drive both managers the same way: build one on the EP
group's CPU group (as vLLM's ``CudaCommunicator`` does), make sure its
workspace exists, clean it up.  The two managers' entry points differ
(two-sided: ``ensure_alltoall_workspace_initialized()``; one-sided:
``initialize(max_num_tokens, top_k, ...)``); each backend module knows its
own, and this maps a kind to it.
"""

from __future__ import annotations

import contextlib

from vllm_ep_kit.backends import flashinfer_one_sided, flashinfer_two_sided
from vllm_ep_kit.backends.mnnvl import build_manager as _build
from vllm_ep_kit.patches.flashinfer_managers import (  # noqa: F401 (re-exported)
    MANAGER_CLASSES,
    WorkspaceShape,
    one_sided_initialize_kwargs,
)

BACKEND_FOR_KIND = {"two_sided": flashinfer_two_sided.NAME,
                    "one_sided": flashinfer_one_sided.NAME}


def check_kind(kind: str) -> str:
    if kind not in MANAGER_CLASSES:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(MANAGER_CLASSES)}")
    return kind


def build_manager(kind: str, cpu_group=None):
    """The vLLM manager of ``kind`` on ``cpu_group`` (default: the EP group's)."""
    return _build(MANAGER_CLASSES[check_kind(kind)], cpu_group)


def ensure_workspace(manager, kind: str, shape: WorkspaceShape = WorkspaceShape()) -> bool:
    """Make sure the workspace exists, through the manager's own entry point."""
    if check_kind(kind) == "two_sided":
        return flashinfer_two_sided.ensure(manager)
    return flashinfer_one_sided.ensure(manager, shape)


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

    class DpGroupCommunicator(original):
        def __init__(self, group):
            super().__init__(ps.get_dp_group().cpu_group)

    mnnvl_compat.CustomCommunicator = DpGroupCommunicator
    try:
        yield
    finally:
        mnnvl_compat.CustomCommunicator = original
