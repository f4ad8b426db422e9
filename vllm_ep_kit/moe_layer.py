"""The MoE layer test matrix as data, and the sequence-parallel (SP) wrapper.

``PARALLEL_COMBOS`` are the layouts a MoE layer runs in; SP holds where vLLM's
``ParallelConfig.use_sequence_parallel_moe`` says so (EP wider than TP, TP > 1,
and a backend that takes SP inputs).  ``BACKEND_SUPPORT`` says which all-to-all
backend supports which activation quantisation and whether it takes SP
inputs; :func:`cell_outcome` turns a (backend, quantisation, layout) cell into
"run" or a stated reason, so every cell is either exercised or skipped with
the reason from the table.

:func:`sp_moe_forward` is the SP wrapper: split tokens across TP with vLLM's
``sequence_parallel_chunk``, run the layer, all-gather over TP with
``tensor_model_parallel_all_gather``, and trim the chunk padding so uneven
token counts round-trip exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vllm_ep_kit.layout import ParallelLayout
from vllm_ep_kit.reference.mlp_moe import MlpExperts, layer_row, mlp_moe_reference
from vllm_ep_kit.reference.moe import RoutingCase, source_tokens
from vllm_ep_kit.vllm_experts import default_impl, expert_partial, tolerance_key

PARALLEL_COMBOS: dict[str, ParallelLayout] = {
    "dp2-ep": ParallelLayout(tp=1, dp=2),
    "tp2-ep": ParallelLayout(tp=2, dp=1),
    "dp4-ep": ParallelLayout(tp=1, dp=4),
    "tp2-dp2-ep-sp": ParallelLayout(tp=2, dp=2),
}


@dataclass(frozen=True)
class BackendSupport:
    quants: tuple[str, ...]  # activation dtypes the backend's MoE path takes
    takes_sp: bool  # in vLLM's use_sequence_parallel_moe list
    cpu_ok: bool = False  # runs over gloo on a CPU-only machine
    needs: str = ""  # what it needs beyond a CUDA GPU (one line)


BACKEND_SUPPORT: dict[str, BackendSupport] = {
    "allgather_reducescatter": BackendSupport(("bf16", "fp32", "fp8"), takes_sp=True,
                                              cpu_ok=True),
    "flashinfer_nvlink_one_sided": BackendSupport(("bf16", "fp8", "nvfp4"), takes_sp=True,
                                                  needs="2+ GPUs with NVLink, FlashInfer"),
    "flashinfer_nvlink_two_sided": BackendSupport(("bf16", "fp8", "nvfp4"), takes_sp=False,
                                                  needs="2+ GPUs with NVLink, FlashInfer"),
    "deepep_high_throughput": BackendSupport(("bf16", "fp8"), takes_sp=True, needs="deep_ep"),
    "deepep_low_latency": BackendSupport(("bf16", "fp8"), takes_sp=True, needs="deep_ep"),
}
QUANTS = ("fp32", "bf16", "fp8", "nvfp4")
# What this machine-independent suite can compute on CPU: fp8 and nvfp4 expert
# kernels exist only on GPUs (nvfp4 needs Blackwell).
CPU_QUANTS = ("fp32", "bf16")


@dataclass(frozen=True)
class MoeLayerCell:
    backend: str
    quant: str
    combo: str

    @property
    def layout(self) -> ParallelLayout:
        return PARALLEL_COMBOS[self.combo]

    @property
    def is_sequence_parallel(self) -> bool:
        """vLLM's rule: the layout is SP-shaped and the backend takes SP inputs."""
        return self.layout.is_sequence_parallel and BACKEND_SUPPORT[self.backend].takes_sp

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.quant}-{self.combo}"


def all_cells() -> list[MoeLayerCell]:
    return [MoeLayerCell(b, q, c) for b in BACKEND_SUPPORT for q in QUANTS
            for c in PARALLEL_COMBOS]


NOT_APPLICABLE = "not applicable"  # the table rules the cell out everywhere
NOT_HERE = "not runnable here"  # possible, but this machine lacks what it needs


def cell_outcome(cell: MoeLayerCell, gpu_count: int) -> tuple[str, str]:
    """("", "") to run the cell here, else (NOT_APPLICABLE or NOT_HERE, reason)."""
    support = BACKEND_SUPPORT[cell.backend]
    if cell.quant not in support.quants:
        return NOT_APPLICABLE, f"{cell.backend} does not take {cell.quant} activations"
    if cell.layout.is_sequence_parallel and not support.takes_sp:
        return NOT_APPLICABLE, (f"{cell.backend} takes no sequence-parallel inputs (not in "
                                "vLLM's use_sequence_parallel_moe list)")
    if gpu_count == 0:
        if not support.cpu_ok:
            return NOT_HERE, f"{cell.backend} needs {support.needs or 'CUDA GPUs'}"
        if cell.quant not in CPU_QUANTS:
            return NOT_HERE, f"{cell.quant} expert kernels need a GPU"
        return "", ""
    return _gpu_outcome(cell, gpu_count)


FLASHINFER_BACKENDS = ("flashinfer_nvlink_one_sided", "flashinfer_nvlink_two_sided")
# Backends whose own dispatch / combine the layer cells drive (``rank_moe_layer``).
LAYER_TRANSPORTS = ("allgather_reducescatter", *FLASHINFER_BACKENDS)


def _gpu_outcome(cell: MoeLayerCell, gpu_count: int) -> tuple[str, str]:
    """On GPUs: one rank per GPU, the backend usable here, and a path we have written."""
    from vllm_ep_kit.backends import usability

    if cell.layout.world_size > gpu_count:
        return NOT_HERE, f"needs {cell.layout.world_size} GPUs, {gpu_count} visible"
    if cell.quant == "nvfp4":
        return NOT_HERE, "nvfp4 needs Blackwell GPUs and vLLM's compiled nvfp4 kernels"
    status = {row.name: row for row in usability()}[cell.backend]
    if not status.usable:
        return NOT_HERE, f"{cell.backend} not usable here: {status.reason}"
    if cell.backend not in LAYER_TRANSPORTS:
        return NOT_HERE, (f"this kit drives no {cell.backend} all-to-all in the layer cells yet "
                          "(running them would test another backend's plumbing)")
    if cell.backend not in FLASHINFER_BACKENDS and cell.quant == "fp8":
        return NOT_HERE, "fp8 scales through the AGRS layer path are not written yet (issue 6)"
    return "", ""


def layer_cases(layout: ParallelLayout, quant: str) -> list[RoutingCase]:
    """Even, uneven and zero-token DP ranks (token counts per DP rank)."""
    dp = layout.dp
    patterns = [(5,) * dp, tuple(3 + 4 * i for i in range(dp)),
                tuple(0 if i == dp - 1 else 7 for i in range(dp))]
    # fp8 rows carry one scale per 128 columns, 16-byte aligned: hidden 512.
    hidden = 512 if quant == "fp8" else 64
    return [RoutingCase(tokens=t, num_experts=4 * layout.ep_size, top_k=2, hidden=hidden,
                        dtype=quant) for t in patterns]


def sp_moe_forward(layer, x: torch.Tensor, *per_token: torch.Tensor, trim: str = "tokens"
                   ) -> torch.Tensor:
    """Split ``x`` (and per-token routing tensors) across TP, run ``layer``, gather, trim.

    ``trim`` (``agrs_plumbing.TRIM_MODES``): ``"tokens"`` cuts back to the ``n``
    input tokens; the negative controls use ``"none"`` (keeps the chunk
    padding: ``ceil(n / tp) * tp`` rows) and ``"local_chunk"`` (upstream's
    wrapper, which cuts to the local chunk's ``ceil(n / tp)`` rows and so
    keeps only TP rank 0's tokens).
    """
    from vllm.model_executor.models.utils import sequence_parallel_chunk

    from vllm_ep_kit.agrs_plumbing import gather_sp_chunks

    chunks = [sequence_parallel_chunk(t) for t in (x, *per_token)]
    return gather_sp_chunks(layer(*chunks), x.shape[0], trim=trim)


def rank_moe_layer(ctx, cell: MoeLayerCell, cases: list[RoutingCase],
                   trim: str = "tokens") -> list[dict]:
    """The MoE layer on this rank through vLLM's parallel state, vs the fp32 reference.

    Dispatch and combine are vLLM's ``AgRsAll2AllManager`` (under SP over the
    EP group, else the DP group), or, for FlashInfer's one-sided backend under
    SP, vLLM's one-sided manager with FlashInfer's kernels (every EP rank
    dispatches its TP chunk).  Where vLLM has no all-to-all (DP=1, no SP)
    every rank has all tokens and the EP ranks' partials are all-reduced over
    TP, as vLLM's layer does.  Experts are this rank's SiLU-MLP experts in the
    case's dtype: vLLM's ``fused_experts`` kernels on GPUs where they load, the
    torch reference elsewhere (each row records which, ``experts``).
    """
    from vllm_ep_kit.agrs_plumbing import dp_forward_context, reduce_tp_partials

    layout: ParallelLayout = ctx.layout
    sp = bool(ctx.vllm_config.parallel_config.use_sequence_parallel_moe)
    if sp != cell.is_sequence_parallel:
        raise AssertionError(f"vLLM says use_sequence_parallel_moe={sp} for {cell.id}, "
                             f"the table says {cell.is_sequence_parallel}")
    flashinfer = cell.backend in FLASHINFER_BACKENDS and layout.uses_all2all
    if flashinfer and not sp:
        return _flashinfer_layer(ctx, cell, cases)
    device = ctx.device
    impl = default_impl(device)
    transport = _OneSidedTransport(ctx) if flashinfer else _AgrsTransport(ctx, sp, impl)
    results = []
    for case in cases:
        start = time.perf_counter()
        experts = MlpExperts(case.num_experts, case.hidden)
        source = source_tokens(case, layout.dp_rank(ctx.rank))
        full = source.to(device)
        layer = transport.layer(case, experts, full)
        with dp_forward_context(ctx, case.tokens, sp):
            if sp:
                # fp8 rows are chunked as bytes (padding a float8 tensor is not supported)
                # with their scales alongside; the layer views them back.
                fp8 = full.x_scale is not None
                out = sp_moe_forward(layer, full.x.view(torch.uint8) if fp8 else full.x,
                                     full.topk_ids, full.topk_weights,
                                     *((full.x_scale,) if fp8 else ()), trim=trim)
            else:
                out = layer(full.x, full.topk_ids, full.topk_weights)
                if transport.has_all2all:
                    out = reduce_tp_partials(out, layout.tp)
        want = mlp_moe_reference(source, experts)
        results.append(layer_row(case, out.cpu(), want, tolerance_key(impl, case.dtype), start,
                                 experts=impl, transport=transport.name))
        transport.after_case()
        ctx.heartbeat()
    transport.close()
    return results


class _AgrsTransport:
    """vLLM's AGRS manager (or no all-to-all), with this rank's experts in between."""

    def __init__(self, ctx, sp: bool, impl: str):
        from vllm.distributed import parallel_state as ps

        from vllm_ep_kit.agrs_plumbing import agrs_manager

        self.ctx, self.sp, self.impl = ctx, sp, impl
        self.manager, _ = agrs_manager(ctx)  # its SP verdict is ``sp``, checked by the caller
        self.ep = ps.get_ep_group()
        self.has_all2all = self.manager is not None
        self.name = "vllm AgRsAll2AllManager" if self.has_all2all else "none (TP all-reduce)"

    def layer(self, case: RoutingCase, experts: MlpExperts, full):
        from vllm_ep_kit.agrs_plumbing import reduce_tp_partials
        from vllm_ep_kit.reference.moe import Tokens

        manager, sp, layout = self.manager, self.sp, self.ctx.layout
        compute = case.torch_dtype if case.dtype != "fp8" else torch.bfloat16

        def layer(x, ids, weights):
            # Without an all-to-all the rows are this rank's own: fp8 keeps its scales.
            received = Tokens(x=x, topk_ids=ids, topk_weights=weights,
                              x_scale=None if sp else full.x_scale)
            if manager is not None:
                gx, gw, gids = manager.dispatch(x, weights, ids, is_sequence_parallel=sp)
                received = Tokens(x=gx, topk_ids=gids, topk_weights=gw)
            partial = expert_partial(self.impl, received, experts, layout.ep_size,
                                     self.ep.rank_in_group, dtype=compute)
            partial = partial.to(case.combine_dtype)
            if manager is not None:
                return manager.combine(partial, is_sequence_parallel=sp)
            return reduce_tp_partials(partial, layout.tp)

        return layer

    def after_case(self) -> None:
        pass

    def close(self) -> None:
        pass


class _OneSidedTransport:
    """vLLM's FlashInfer one-sided manager: each EP rank dispatches its own rows.

    Used under SP, where the EP ranks are the TP chunks of every DP rank's
    tokens; the manager is (re)initialised per case as vLLM does.
    """

    has_all2all = True
    name = "vllm FlashInferNVLinkOneSidedManager"

    def __init__(self, ctx):
        from vllm.distributed import parallel_state as ps

        from vllm_ep_kit.manager_roundtrip import vllm_manager

        self.ctx = ctx
        self.ep = ps.get_ep_group()
        self.manager, _ = vllm_manager("one_sided")

    def layer(self, case: RoutingCase, experts: MlpExperts, full):
        from vllm_ep_kit.flashinfer_direct import one_sided_round_trip
        from vllm_ep_kit.manager_roundtrip import manager_combine, prepare_one_sided
        from vllm_ep_kit.reference.moe import Tokens

        prepare_one_sided(self.manager, case)
        device = self.ctx.device
        combine = manager_combine(self.manager, case, device)

        def layer(x, ids, weights, *scale):
            rows = Tokens(x=x.view(torch.float8_e4m3fn) if scale else x, topk_ids=ids,
                          topk_weights=weights, x_scale=scale[0] if scale else None)
            return one_sided_round_trip(self.manager.moe_alltoall, rows, case,
                                        self.ep.rank_in_group, self.ep.world_size, device,
                                        combine=combine, experts=experts)

        return layer

    def after_case(self) -> None:
        self.ep.barrier()

    def close(self) -> None:
        self.manager.cleanup()


def _flashinfer_layer(ctx, cell: MoeLayerCell, cases: list[RoutingCase]) -> list[dict]:
    """A FlashInfer NVLink cell: vLLM's manager moves the tokens, MLP experts compute.

    The dispatch / combine are the manager's workspace and FlashInfer's kernels
    (as in ``check``); each EP rank applies its own SiLU-MLP experts to what it
    received, and each source's combined rows are compared with the fp32 MLP
    MoE of its tokens.
    """
    from vllm_ep_kit.manager_roundtrip import rank_manager_roundtrip
    from vllm_ep_kit.mnnvl_managers import kind_of_backend

    rows = rank_manager_roundtrip(ctx, kind_of_backend(cell.backend), cases, mlp_experts=True)
    rank = ctx.layout.dp_rank(ctx.rank)
    return [{"case": case.describe(), "rows": case.tokens[rank], "tokens": case.tokens[rank],
             "max_error": row.max_error, "passed": row.passed, "seconds": row.seconds,
             "experts": default_impl(ctx.device)}
            for case, row in zip(cases, rows)]
