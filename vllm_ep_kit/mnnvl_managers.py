"""Drive vLLM's FlashInfer NVLink all-to-all managers the way vLLM does.

One vocabulary for both managers, used by the tests, ``check`` and the
hotfix probes: build the manager on the EP group's CPU group (as vLLM's
``CudaCommunicator`` does), make sure its workspace exists, clean it up.
The two managers' entry points differ (two-sided: ``initialize(world_size,
rank, gpus_per_node)`` / ``ensure_alltoall_workspace_initialized()``;
one-sided: ``initialize(max_num_tokens, top_k, ...)``); this hides that.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

MANAGER_CLASSES = {
    "two_sided": "FlashInferNVLinkTwoSidedManager",
    "one_sided": "FlashInferNVLinkOneSidedManager",
}
BACKEND_FOR_KIND = {
    "two_sided": "flashinfer_nvlink_two_sided",
    "one_sided": "flashinfer_nvlink_one_sided",
}


@dataclass(frozen=True)
class WorkspaceShape:
    """What the one-sided manager sizes its workspace from."""

    max_num_tokens: int = 64
    top_k: int = 4
    num_experts: int = 16
    hidden_size: int = 256
    x_bytes_per_token: int = 512  # bf16 hidden
    x_sf_bytes_per_token: int = 0


def kind_of_backend(backend: str) -> str:
    """``flashinfer_nvlink_one_sided`` -> ``one_sided`` (and two-sided)."""
    for kind, name in BACKEND_FOR_KIND.items():
        if name == backend:
            return kind
    raise ValueError(f"backend={backend!r}: not a FlashInfer NVLink backend")


def check_kind(kind: str) -> str:
    if kind not in MANAGER_CLASSES:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(MANAGER_CLASSES)}")
    return kind


def build_manager(kind: str, cpu_group=None):
    """The vLLM manager of ``kind`` on ``cpu_group`` (default: the EP group's)."""
    from vllm.distributed import parallel_state as ps
    from vllm.distributed.device_communicators import all2all

    cls = getattr(all2all, MANAGER_CLASSES[check_kind(kind)])
    return cls(cpu_group if cpu_group is not None else ps.get_ep_group().cpu_group)


def one_sided_initialize_kwargs(manager, shape: WorkspaceShape) -> dict:
    """Arguments for the one-sided ``initialize`` of the installed vLLM.

    vLLM 0.18-0.21 take (max_num_tokens, top_k, num_experts, hidden_size);
    later releases add the per-token payload sizes.  Pass what it accepts.
    """
    import inspect

    accepted = inspect.signature(manager.initialize).parameters
    values = {"max_num_tokens": shape.max_num_tokens, "top_k": shape.top_k,
              "num_experts": shape.num_experts, "hidden_size": shape.hidden_size,
              "x_bytes_per_token": shape.x_bytes_per_token,
              "x_sf_bytes_per_token": shape.x_sf_bytes_per_token}
    unknown = [n for n, p in accepted.items()
               if n not in values and p.default is inspect.Parameter.empty]
    if unknown:
        raise TypeError(f"{type(manager).__name__}.initialize needs {unknown}, "
                        "which this vllm-ep-kit does not know how to supply")
    return {k: v for k, v in values.items() if k in accepted}


def ensure_workspace(manager, kind: str, shape: WorkspaceShape = WorkspaceShape()) -> bool:
    """Make sure the workspace exists, through the manager's own entry point."""
    if check_kind(kind) == "two_sided":
        return bool(manager.ensure_alltoall_workspace_initialized())
    manager.initialize(**one_sided_initialize_kwargs(manager, shape))
    return bool(manager.initialized)


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
