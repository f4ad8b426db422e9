"""FlashInfer's two-sided NVLink all-to-all (``MnnvlMoe`` alltoallv), vLLM's
``FlashInferNVLinkTwoSidedManager``.

``prepare`` routes top-k ids and weights to the ranks owning the experts and
returns them aligned with the rows ``alltoallv`` delivers; fp8 scales travel
in a second ``alltoallv`` with the same routing info, as vLLM's two-sided
dispatch sends ``x_sf``; combine sums each token's rows back at its source.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.mnnvl import NVLINK_NEEDS, DirectTransport, ManagerTransport
from vllm_ep_kit.backends.spec import ALL_FORMATS, Backend
from vllm_ep_kit.backends.transport import Dispatched, Transport, received
from vllm_ep_kit.patches.flashinfer_managers import TWO_SIDED_MANAGER, WorkspaceShape
from vllm_ep_kit.reference.moe import RoutingCase, Tokens

if TYPE_CHECKING:
    from vllm_ep_kit.harness.rank import RankContext

NAME = "flashinfer_nvlink_two_sided"


class _TwoSidedKernels(Transport):
    """Dispatch and combine through ``MnnvlMoe`` on ``self.moe_workspace`` /
    ``self.moe_prepare_workspace`` (set by the concrete transport)."""

    moe_workspace: torch.Tensor
    moe_prepare_workspace: torch.Tensor
    device: torch.device  # the concrete transport's

    def dispatch(self, tokens: Tokens) -> Dispatched:
        return self.send(self.prepared_case, *tokens.wire(self.device), self.max_tokens)

    def send(
        self,
        case: RoutingCase,
        x: torch.Tensor,
        scale: torch.Tensor | None,
        ids: torch.Tensor,
        w: torch.Tensor,
        bound: int,
    ) -> Dispatched:
        """Dispatch ``case``'s wire tensors already on the GPU (also a CUDA graph's captured
        inputs) under the per-rank token bound ``bound``; the routing info is combine's
        state."""
        from flashinfer.comm.trtllm_alltoall import MnnvlMoe

        info, recv_ids, recv_w, _ = MnnvlMoe.mnnvl_moe_alltoallv_prepare_without_allgather(
            ids,
            w,
            None,
            self.moe_prepare_workspace,
            bound,
            self.rank,
            self.world,
            case.num_experts,
            case.num_experts,
            case.top_k,
        )
        recv_x = MnnvlMoe.mnnvl_moe_alltoallv(x, info, self.moe_workspace, self.rank, self.world)
        recv_scale = (
            None
            if scale is None
            else MnnvlMoe.mnnvl_moe_alltoallv(
                scale, info, self.moe_workspace, self.rank, self.world
            )
        )
        rows = recv_x.shape[0]
        return Dispatched(
            received(recv_x, recv_scale, recv_ids[:rows], recv_w[:rows].view(torch.float32), case),
            state=info,
            source_rows=x.shape[0],
        )

    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> torch.Tensor:
        from flashinfer.comm.trtllm_alltoall import MnnvlMoe

        combined: torch.Tensor = MnnvlMoe.mnnvl_moe_alltoallv_combine(
            partial,
            dispatched.state,
            self.moe_workspace,
            ep_rank=self.rank,
            ep_size=self.world,
            top_k=self.prepared_case.top_k,
            token_count=dispatched.source_rows,
        )
        return combined


class TwoSidedTransport(_TwoSidedKernels, ManagerTransport):
    """vLLM's two-sided manager's workspaces (``ensure_alltoall_workspace_initialized``)."""

    MANAGER_CLASS = TWO_SIDED_MANAGER
    PREPARE_FINALIZE = (
        "vllm.model_executor.layers.fused_moe.prepare_finalize."
        "flashinfer_nvlink_two_sided:FlashInferNVLinkTwoSidedPrepareAndFinalize"
    )
    # measured against FlashInfer's MnnvlMoe on 1x H200
    # (test_two_sided_kernel_emulator_matches_flashinfer_kernels)
    RECEIVES_LOCAL_IDS_ONLY = True

    @staticmethod
    def ensure(manager: Any, shape: WorkspaceShape | None = None) -> bool:
        """The manager's own entry point (its workspace size is fixed: ``shape`` unused)."""
        return bool(manager.ensure_alltoall_workspace_initialized())

    @staticmethod
    def workspace(manager: Any) -> torch.Tensor | None:
        workspace: torch.Tensor | None = manager.workspace_tensor if manager.initialized else None
        return workspace

    def prepare(self, case: RoutingCase) -> None:
        super().prepare(case)
        if not self.ensure(self.manager):
            raise RuntimeError("two-sided manager did not initialise its workspace")
        self.moe_workspace = self.manager.workspace_tensor
        self.moe_prepare_workspace = self.manager.prepare_workspace_tensor


class DirectTwoSidedTransport(_TwoSidedKernels, DirectTransport):
    """``MnnvlMoe`` workspaces built on the harness's world group (no vLLM)."""

    name = "flashinfer MnnvlMoe"

    def __init__(self, ctx: RankContext, backend: Backend) -> None:
        super().__init__(ctx, backend)
        from flashinfer.comm.trtllm_alltoall import MnnvlMoe

        mapping = self.mapping()
        config = self.mnnvl_config(fabric_page_size=1 << 29, allocation_granularity=0)
        self.moe_workspace = MnnvlMoe.get_moe_workspaces(mapping, config)
        self.moe_prepare_workspace = MnnvlMoe.get_moe_prepare_workspace(mapping, config)


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
        formats=ALL_FORMATS,
        formats_source="vllm/model_executor/layers/fused_moe/prepare_finalize/"
        "flashinfer_nvlink_two_sided.py (quantised before the all-to-all, as the layer says)",
    )
)
# The same kernels on FlashInfer's own workspaces, for the kernel tests (not registered).
DIRECT = dataclasses.replace(BACKEND, transport=DirectTwoSidedTransport)
