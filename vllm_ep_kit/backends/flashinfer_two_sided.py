"""FlashInfer's two-sided NVLink all-to-all (``MnnvlMoe`` alltoallv), vLLM's
``FlashInferNVLinkTwoSidedManager``.

``prepare`` routes top-k ids and weights to the ranks owning the experts and
returns them aligned with the rows ``alltoallv`` delivers; fp8 scales travel
in a second ``alltoallv`` with the same routing info, as vLLM's two-sided
dispatch sends ``x_sf``; combine sums each token's rows back at its source.
"""

from __future__ import annotations

import dataclasses

import torch

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.mnnvl import NVLINK_NEEDS, DirectTransport, ManagerTransport
from vllm_ep_kit.backends.spec import Backend
from vllm_ep_kit.backends.transport import Dispatched, received
from vllm_ep_kit.patches.flashinfer_managers import TWO_SIDED_MANAGER

NAME = "flashinfer_nvlink_two_sided"


class _TwoSidedKernels:
    """Dispatch and combine through ``MnnvlMoe`` on ``self.workspace`` /
    ``self.prepare_workspace`` (set by the concrete transport)."""

    workspace = prepare_workspace = None

    def dispatch(self, tokens):
        return self.send(self.case, *tokens.wire(self.device), self.max_tokens)

    def send(self, case, x, scale, ids, w, bound: int) -> Dispatched:
        """Dispatch ``case``'s wire tensors already on the GPU (also a CUDA graph's captured
        inputs) under the per-rank token bound ``bound``; the routing info is combine's
        state."""
        from flashinfer.comm.trtllm_alltoall import MnnvlMoe

        info, recv_ids, recv_w, _ = MnnvlMoe.mnnvl_moe_alltoallv_prepare_without_allgather(
            ids,
            w,
            None,
            self.prepare_workspace,
            bound,
            self.rank,
            self.world,
            case.num_experts,
            case.num_experts,
            case.top_k,
        )
        recv_x = MnnvlMoe.mnnvl_moe_alltoallv(x, info, self.workspace, self.rank, self.world)
        recv_scale = (
            None
            if scale is None
            else MnnvlMoe.mnnvl_moe_alltoallv(scale, info, self.workspace, self.rank, self.world)
        )
        rows = recv_x.shape[0]
        return Dispatched(
            received(recv_x, recv_scale, recv_ids[:rows], recv_w[:rows].view(torch.float32), case),
            state=info,
            source_rows=x.shape[0],
        )

    def combine(self, dispatched, partial):
        from flashinfer.comm.trtllm_alltoall import MnnvlMoe

        return MnnvlMoe.mnnvl_moe_alltoallv_combine(
            partial,
            dispatched.state,
            self.workspace,
            ep_rank=self.rank,
            ep_size=self.world,
            top_k=self.case.top_k,
            token_count=dispatched.source_rows,
        )


class TwoSidedTransport(_TwoSidedKernels, ManagerTransport):
    """vLLM's two-sided manager's workspaces (``ensure_alltoall_workspace_initialized``)."""

    MANAGER_CLASS = TWO_SIDED_MANAGER
    PREPARE_FINALIZE = (
        "vllm.model_executor.layers.fused_moe.prepare_finalize."
        "flashinfer_nvlink_two_sided:FlashInferNVLinkTwoSidedPrepareAndFinalize"
    )
    RECEIVES_LOCAL_IDS_ONLY = True  # measured against the kernels: run #43

    @staticmethod
    def ensure(manager, shape=None) -> bool:
        """The manager's own entry point (its workspace size is fixed: ``shape`` unused)."""
        return bool(manager.ensure_alltoall_workspace_initialized())

    @staticmethod
    def workspace(manager):
        return manager.workspace_tensor if manager.initialized else None

    def prepare(self, case):
        super().prepare(case)
        if not self.ensure(self.manager):
            raise RuntimeError("two-sided manager did not initialise its workspace")
        self.workspace = self.manager.workspace_tensor
        self.prepare_workspace = self.manager.prepare_workspace_tensor


class DirectTwoSidedTransport(_TwoSidedKernels, DirectTransport):
    """``MnnvlMoe`` workspaces built on the harness's world group (no vLLM)."""

    name = "flashinfer MnnvlMoe"

    def __init__(self, ctx, backend):
        super().__init__(ctx, backend)
        from flashinfer.comm.trtllm_alltoall import MnnvlMoe

        mapping = self.mapping()
        config = self.mnnvl_config(fabric_page_size=1 << 29, allocation_granularity=0)
        self.workspace = MnnvlMoe.get_moe_workspaces(mapping, config)
        self.prepare_workspace = MnnvlMoe.get_moe_prepare_workspace(mapping, config)


BACKEND = registry.register(
    Backend(
        NAME,
        NVLINK_NEEDS,
        vllm_has="vllm.utils.flashinfer:has_flashinfer_nvlink_two_sided",
        note="FlashInfer MnnvlMoe alltoallv",
        aliases=("flashinfer_all2allv",),
        vllm_name=NAME,
        transport=TwoSidedTransport,
        check_dtypes=("bf16", "fp16", "fp32", "fp8"),
        check_hidden=512,
        bench_dtypes=("bf16", "fp8"),
        layer_quants=("bf16", "fp8", "nvfp4"),
        layer_driven=("bf16", "fp8"),
        takes_sp=False,
    )
)
# The same kernels on FlashInfer's own workspaces, for the kernel tests (not registered).
DIRECT = dataclasses.replace(BACKEND, transport=DirectTwoSidedTransport)
