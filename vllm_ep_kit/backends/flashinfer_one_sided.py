"""FlashInfer's one-sided NVLink all-to-all (``MoeAlltoAll``), vLLM's
``FlashInferNVLinkOneSidedManager``.

Two shapes of vLLM's manager, told apart by what it offers: up to vLLM 0.32
it holds a ``MoeAlltoAll`` (``moe_alltoall``, ``combine_into``); from 0.33 it
holds FlashInfer's ``flashinfer.moe_ep.NVLinkOneSidedAlltoAll``
(``get_communication()``, which dispatches and combines itself and wraps a
``MoeAlltoAll``), and ``initialize`` takes the dispatch format and extra
payload bytes instead of per-token byte counts.

Dispatch writes each token once into the receive buffer of every rank owning
one of its experts ([ranks, max_tokens, ...] per payload: hidden states, fp8
scales, top-k ids, weights); combine reads each token's rows back and sums
them.  vLLM's manager sizes FlashInfer's combine region as hidden * 2 bytes:
its combine payload is bf16 (fp8 inputs are combined in bf16 too); an fp32
payload fails FlashInfer's "workspace insufficient for combine payload
region" check (measured), so check covers bf16 and fp8 only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.mnnvl import NVLINK_NEEDS, DirectTransport, ManagerTransport
from vllm_ep_kit.backends.spec import Backend
from vllm_ep_kit.backends.transport import Dispatched, Transport, received
from vllm_ep_kit.patches.flashinfer_managers import (
    ONE_SIDED_MANAGER,
    WorkspaceShape,
    one_sided_initialize_kwargs,
)
from vllm_ep_kit.reference.moe import RoutingCase, Tokens

if TYPE_CHECKING:
    from flashinfer.comm.trtllm_moe_alltoall import MoeAlltoAll
    from flashinfer.moe_ep import MoEEpCommunication, NVLinkOneSidedAlltoAll

    from vllm_ep_kit.harness.rank import RankContext

NAME = "flashinfer_nvlink_one_sided"
MANAGER_COMBINE_DTYPES = (torch.bfloat16,)


def case_shape(case: RoutingCase) -> WorkspaceShape:
    return WorkspaceShape(
        max_num_tokens=max(max(case.tokens), 1),
        top_k=case.top_k,
        num_experts=case.num_experts,
        hidden_size=case.hidden,
        x_bytes_per_token=case.x_bytes_per_token,
        x_sf_bytes_per_token=case.scale_bytes_per_token,
    )


class _OneSidedKernels(Transport):
    """Dispatch through ``self.a2a`` (a ``MoeAlltoAll``); combine is the transport's."""

    a2a: MoeAlltoAll | None = None
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
        inputs) under the per-rank token bound ``bound`` (kept as the state combine needs)."""
        payloads = [x, *([scale] if scale is not None else []), ids, w]
        assert self.a2a is not None, "no MoeAlltoAll: prepare() first"
        got = self.a2a.dispatch(ids, payloads, bound)
        return Dispatched(
            received(got[0], got[1] if scale is not None else None, got[-2], got[-1], case),
            state=bound,
            source_rows=x.shape[0],
        )


def _moe_ep_dispatch(
    transport: Transport,
    communication: MoEEpCommunication,
    device: torch.device,
    tokens: Tokens,
) -> Dispatched:
    x, scale, ids, w = tokens.wire(device)
    got = communication.dispatch(
        x, ids, w, hidden_states_scale=scale, max_tokens_per_rank=transport.max_tokens
    )
    assert got.topk_weights is not None, "dispatched with weights: received with them"
    return Dispatched(
        received(
            got.hidden_states,
            got.hidden_states_scale,
            got.topk_ids,
            got.topk_weights,
            transport.prepared_case,
        ),
        source_rows=x.shape[0],
    )


def _moe_ep_combine(
    transport: Transport,
    communication: MoEEpCommunication,
    device: torch.device,
    dispatched: Dispatched,
    partial: torch.Tensor,
) -> torch.Tensor:
    case = transport.prepared_case
    out = torch.empty(
        dispatched.source_rows,
        case.hidden,
        dtype=case.combine_dtype,
        device=device,
    )
    communication.combine(partial, output=out)
    return out


class _MoeEpKernels(Transport):
    """Dispatch and combine through ``self.communication``, FlashInfer's
    ``NVLinkOneSidedAlltoAll`` (received rows come flattened: [ranks * max_tokens, ...])."""

    communication: MoEEpCommunication | None = None
    device: torch.device  # the concrete transport's

    def dispatch(self, tokens: Tokens) -> Dispatched:
        assert self.communication is not None, "no communication: prepare() first"
        return _moe_ep_dispatch(self, self.communication, self.device, tokens)

    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> torch.Tensor:
        assert self.communication is not None, "no communication: prepare() first"
        return _moe_ep_combine(self, self.communication, self.device, dispatched, partial)


def manager_communication(manager: Any) -> NVLinkOneSidedAlltoAll | None:
    """vLLM 0.33's ``NVLinkOneSidedAlltoAll`` behind the manager, None for older managers."""
    return manager.get_communication() if hasattr(manager, "get_communication") else None


class OneSidedTransport(_OneSidedKernels, ManagerTransport):
    """vLLM's one-sided manager, (re)initialised per case as vLLM does for heterogeneous
    layers; combine through the manager's ``combine_into`` (vLLM <= 0.32) or its
    communication object (0.33: :class:`_MoeEpKernels`)."""

    MANAGER_CLASS = ONE_SIDED_MANAGER
    PREPARE_FINALIZE = (
        "vllm.model_executor.layers.fused_moe.prepare_finalize."
        "flashinfer_nvlink_one_sided:FlashInferNVLinkOneSidedPrepareAndFinalize"
    )
    RECEIVES_IN_SOURCE_BLOCKS = True
    GROWS_ON_INITIALIZE = True
    COMBINE_DTYPES = MANAGER_COMBINE_DTYPES
    communication: MoEEpCommunication | None  # vLLM 0.33's manager's, set by prepare

    @staticmethod
    def ensure(manager: Any, shape: WorkspaceShape = WorkspaceShape()) -> bool:
        """(Re)initialise through the manager's ``initialize``; it grows, never shrinks."""
        manager.initialize(**one_sided_initialize_kwargs(manager, shape))
        return bool(manager.initialized)

    @staticmethod
    def workspace(manager: Any) -> torch.Tensor | None:
        if not manager.initialized:
            return None
        communication = manager_communication(manager)
        a2a: MoeAlltoAll = manager.moe_alltoall if communication is None else communication.alltoall
        workspace: torch.Tensor = a2a.workspace
        return workspace

    def __init__(self, ctx: RankContext, backend: Backend) -> None:
        super().__init__(ctx, backend)
        self._out: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def prepare(self, case: RoutingCase) -> None:
        if case.combine_dtype not in self.COMBINE_DTYPES:
            raise ValueError(
                f"case {case.describe()}: vLLM's one-sided manager combines "
                f"{self.COMBINE_DTYPES} payloads only"
            )
        super().prepare(case)
        if (
            hasattr(self.manager, "get_communication")
            and self.manager.initialized
            and (self.manager.top_k, self.manager.num_experts) != (case.top_k, case.num_experts)
        ):
            # vLLM 0.33's manager keeps one top_k and expert count for its life (its
            # initialize asserts them): a case with others starts afresh, as another model
            self.manager.cleanup()
        self.ensure(self.manager, case_shape(case))
        self.communication = manager_communication(self.manager)
        self.a2a = None if self.communication is not None else self.manager.moe_alltoall

    def dispatch(self, tokens: Tokens) -> Dispatched:
        if self.communication is not None:
            return _moe_ep_dispatch(self, self.communication, self.device, tokens)
        return super().dispatch(tokens)

    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> torch.Tensor:
        if self.communication is not None:
            return _moe_ep_combine(self, self.communication, self.device, dispatched, partial)
        case = self.prepared_case
        key = (dispatched.source_rows, case.hidden, case.combine_dtype)
        if key not in self._out:  # one output buffer per shape, as a layer keeps one
            self._out[key] = torch.empty(key[0], key[1], dtype=key[2], device=self.device)
        out = self._out[key]
        self.manager.combine_into(partial, self.max_tokens, out)
        return out


def workspace_size(case: RoutingCase, world: int, layers: tuple[RoutingCase, ...] = ()) -> int:
    """FlashInfer's workspace bytes per rank for ``case`` (payloads + combine region), grown
    to the union of ``layers``' payloads: one workspace serves every layer, as vLLM's
    manager grows it (e.g. an NVFP4 model with a bf16 MTP head)."""
    from flashinfer.comm.trtllm_moe_alltoall import moe_a2a_get_workspace_size_per_rank

    every = (case, *layers)
    dispatch = max(c.x_bytes_per_token + c.scale_bytes_per_token + c.top_k * 8 for c in every)
    combine = max(c.hidden * torch.tensor([], dtype=c.combine_dtype).element_size() for c in every)
    size: int = moe_a2a_get_workspace_size_per_rank(
        ep_size=world,
        max_num_tokens=max(max(c.tokens) for c in every) or 1,
        total_dispatch_payload_size_per_token=dispatch,
        combine_payload_size_per_token=combine,
    )
    return size


class DirectOneSidedTransport(_OneSidedKernels, DirectTransport):
    """A ``MoeAlltoAll`` built per case on the harness's world group (no vLLM)."""

    name = "flashinfer MoeAlltoAll"

    def prepare(self, case: RoutingCase) -> None:
        from flashinfer.comm.trtllm_moe_alltoall import MoeAlltoAll

        super().prepare(case)
        self.a2a = None  # drop the previous case's before allocating
        self.a2a = MoeAlltoAll(
            mapping=self.mapping(moe_ep_size=self.world),
            max_num_tokens=self.max_tokens,
            top_k=case.top_k,
            num_experts=case.num_experts,
            workspace_size_per_rank=workspace_size(case, self.world, self.layers),
            mnnvl_config=self.mnnvl_config(),
        )

    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> torch.Tensor:
        assert self.a2a is not None, "no MoeAlltoAll: prepare() first"
        combined: torch.Tensor = self.a2a.combine(partial, dispatched.state)
        rows: torch.Tensor = combined[: dispatched.source_rows]
        return rows

    def close(self) -> None:
        self.a2a = None


class DirectMoeEpTransport(_MoeEpKernels, DirectTransport):
    """FlashInfer's ``flashinfer.moe_ep`` one-sided communication (what vLLM 0.33's manager
    builds), created per case on the harness's world group (no vLLM)."""

    name = "flashinfer moe_ep NVLinkOneSidedAlltoAll"

    def prepare(self, case: RoutingCase) -> None:
        import torch.distributed as dist
        from flashinfer.moe_ep import (
            BootstrapConfig,
            MoEEpCommParams,
            NVLinkOneSidedConfig,
            create_communication,
        )

        super().prepare(case)
        self.close()  # drop the previous case's before allocating
        row = case.combine_dtype  # unquantised rows; expert outputs come back in it
        params = MoEEpCommParams(
            num_experts=case.num_experts,
            top_k=case.top_k,
            max_tokens_per_rank=self.max_tokens,
            hidden_size=case.hidden,
            dtype=row,
        )
        extra = case_shape(case).bytes_beyond(params.dispatch_bytes_per_token)
        bootstrap = BootstrapConfig(
            world_size=self.world,
            rank=self.rank,
            device=self.device.index,
            process_group=dist.group.WORLD,
        )
        config = NVLinkOneSidedConfig(
            extra_payload_bytes_per_token=extra, comm_backend=self.comm_backend()
        )
        self.communication = create_communication(bootstrap, params, backend=config)

    def close(self) -> None:
        if self.communication is not None:
            self.communication.destroy()
            self.communication = None


BACKEND = registry.register(
    Backend(
        NAME,
        NVLINK_NEEDS,
        vllm_has="vllm.utils.flashinfer:has_flashinfer_nvlink_one_sided",
        note="FlashInfer MoeAlltoAll",
        vllm_name=NAME,
        transport=OneSidedTransport,
        check_dtypes=("bf16", "fp8"),
        check_hidden=512,
        bench_dtypes=("bf16", "fp8"),
        layer_quants=("bf16", "fp8", "nvfp4"),
        layer_driven=("bf16", "fp8"),
        takes_sp=True,
        formats=("bf16", "fp8-block", "nvfp4", "mxfp8"),
        refuses=("fp8",),
        formats_source="vllm/model_executor/layers/fused_moe/all2all_utils.py (one-sided "
        "dispatch: nvfp4, mxfp8, DeepSeek blockwise fp8 and bf16; others NotImplementedError)",
    )
)
# The same kernels on FlashInfer's own MoeAlltoAll, for the kernel tests (not registered).
DIRECT = dataclasses.replace(BACKEND, transport=DirectOneSidedTransport)
# FlashInfer's newer wrapper of the same kernels (vLLM 0.33's manager), for the kernel tests.
DIRECT_MOE_EP = dataclasses.replace(
    BACKEND,
    transport=DirectMoeEpTransport,
    needs=dataclasses.replace(NVLINK_NEEDS, modules=("flashinfer.moe_ep",)),
)
