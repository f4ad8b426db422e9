"""The MoE layer test matrix, generated from the backend registry, and the SP wrapper.

``PARALLEL_COMBOS`` are the layouts a MoE layer runs in; SP holds where vLLM's
``ParallelConfig.use_sequence_parallel_moe`` says so (EP wider than TP, TP > 1,
and a backend that takes SP inputs).  Each registered backend says which
activation quantisations vLLM's MoE path takes with it (``layer_quants``),
which of them this kit's cells drive (``layer_driven``) and whether it takes
SP inputs; :func:`cell_outcome` turns a (backend, quantisation, layout) cell
into "run" or a stated reason, so every cell is either exercised or skipped.

:func:`sp_moe_forward` is the SP wrapper: split tokens across TP with vLLM's
``sequence_parallel_chunk``, run the layer, all-gather over TP with
``tensor_model_parallel_all_gather``, and trim the chunk padding so uneven
token counts round-trip exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from vllm_ep_kit import backends as registry
from vllm_ep_kit.backends.spec import Backend
from vllm_ep_kit.backends.vllm_experts import default_impl, tolerance_key
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.mlp_moe import MlpExperts, mlp_moe_reference
from vllm_ep_kit.reference.moe import RoutingCase, Tokens, source_tokens
from vllm_ep_kit.reference.results import CaseResult, compared
from vllm_ep_kit.reference.tolerance import LAYER

PARALLEL_COMBOS: dict[str, ParallelLayout] = {
    "dp2-ep": ParallelLayout(tp=1, dp=2),
    "tp2-ep": ParallelLayout(tp=2, dp=1),
    "dp4-ep": ParallelLayout(tp=1, dp=4),
    "tp2-dp2-ep-sp": ParallelLayout(tp=2, dp=2),
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
    # Resolved where the cell is made: rank processes receive it with the cell, so a
    # backend registered only in the test process still runs there.
    spec: Backend = field(default=None, compare=False, repr=False)  # type: ignore[assignment]  # None: the registry's, set in __post_init__

    def __post_init__(self) -> None:
        if self.spec is None:
            object.__setattr__(self, "spec", registry.get(self.backend))

    @property
    def layout(self) -> ParallelLayout:
        return PARALLEL_COMBOS[self.combo]

    @property
    def is_sequence_parallel(self) -> bool:
        """vLLM's rule: the layout is SP-shaped and the backend takes SP inputs."""
        return self.layout.is_sequence_parallel and self.spec.takes_sp

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.quant}-{self.combo}"


def layer_backends() -> list[Backend]:
    """The registered backends with a MoE path in vLLM (they have layer quantisations)."""
    return [b for b in registry.all_backends() if b.layer_quants]


def all_cells() -> list[MoeLayerCell]:
    return [
        MoeLayerCell(b.name, q, c)
        for b in layer_backends()
        for q in QUANTS
        for c in PARALLEL_COMBOS
    ]


NOT_APPLICABLE = "not applicable"  # the table rules the cell out everywhere
NOT_HERE = "not runnable here"  # possible, but this machine lacks what it needs


def cell_outcome(cell: MoeLayerCell, gpu_count: int) -> tuple[str, str]:
    """("", "") to run the cell here, else (NOT_APPLICABLE or NOT_HERE, reason)."""
    spec = cell.spec
    if cell.quant not in spec.layer_quants:
        return NOT_APPLICABLE, f"{cell.backend} does not take {cell.quant} activations"
    if cell.layout.is_sequence_parallel and not spec.takes_sp:
        return NOT_APPLICABLE, (
            f"{cell.backend} takes no sequence-parallel inputs (not in "
            "vLLM's use_sequence_parallel_moe list)"
        )
    if gpu_count == 0:
        if not spec.needs.cpu_ok:
            return NOT_HERE, f"{cell.backend} needs {spec.needs.describe()}"
        if cell.quant not in CPU_QUANTS:
            return NOT_HERE, f"{cell.quant} expert kernels need a GPU"
        return _driven(cell)
    return _gpu_outcome(cell, gpu_count)


def _driven(cell: MoeLayerCell) -> tuple[str, str]:
    """Whether this kit's layer cells drive the backend with the cell's quantisation."""
    spec = cell.spec
    if not spec.driven:
        return NOT_HERE, (
            f"this kit drives no {cell.backend} all-to-all in the layer cells yet "
            "(running them would test another backend's plumbing)"
        )
    if cell.quant not in spec.layer_driven:
        return NOT_HERE, (
            f"this kit's layer cells do not drive {cell.quant} activations "
            f"through {cell.backend} yet (they drive {', '.join(spec.layer_driven)})"
        )
    return "", ""


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
    return _driven(cell)


def layer_cases(layout: ParallelLayout, quant: str) -> list[RoutingCase]:
    """Even, uneven and zero-token DP ranks (token counts per DP rank)."""
    dp = layout.dp
    patterns = [
        (5,) * dp,
        tuple(3 + 4 * i for i in range(dp)),
        tuple(0 if i == dp - 1 else 7 for i in range(dp)),
    ]
    # fp8 rows carry one scale per 128 columns, 16-byte aligned: hidden 512.
    hidden = 512 if quant == "fp8" else 64
    return [
        RoutingCase(tokens=t, num_experts=4 * layout.ep_size, top_k=2, hidden=hidden, dtype=quant)
        for t in patterns
    ]


def sp_moe_forward(
    layer, x: torch.Tensor, *per_token: torch.Tensor, trim: str = "tokens"
) -> torch.Tensor:
    """Split ``x`` (and per-token routing tensors) across TP, run ``layer``, gather, trim.

    ``trim`` (``forward.TRIM_MODES``): ``"tokens"`` cuts back to the ``n``
    input tokens; the negative controls use ``"none"`` (keeps the chunk
    padding: ``ceil(n / tp) * tp`` rows) and ``"local_chunk"`` (upstream's
    wrapper, which cuts to the local chunk's ``ceil(n / tp)`` rows and so
    keeps only TP rank 0's tokens).
    """
    from vllm.model_executor.models.utils import sequence_parallel_chunk

    from vllm_ep_kit.backends.forward import gather_sp_chunks

    chunks = [sequence_parallel_chunk(t) for t in (x, *per_token)]
    return gather_sp_chunks(layer(*chunks), x.shape[0], trim=trim)


def rank_moe_layer(
    ctx, cell: MoeLayerCell, cases: list[RoutingCase], trim: str = "tokens"
) -> list[CaseResult]:
    """The MoE layer on this rank through vLLM's parallel state, vs the fp32 reference.

    Dispatch and combine are the cell's backend's transport (under SP every
    EP rank dispatches its TP chunk).  Where vLLM has no all-to-all (DP=1, no
    SP) every rank has all tokens and the EP ranks' partials are all-reduced
    over TP, as vLLM's layer does.  Experts are this rank's SiLU-MLP experts
    in the case's dtype: vLLM's ``fused_experts`` kernels on GPUs where they
    load, the torch reference elsewhere (each result's ``detail`` records which,
    ``experts``, and the transport).
    """
    from vllm.distributed import parallel_state as ps

    from vllm_ep_kit.backends.forward import dp_forward_context, reduce_tp_partials

    layout: ParallelLayout = ctx.layout
    sp = bool(ctx.vllm_config.parallel_config.use_sequence_parallel_moe)
    if sp != cell.is_sequence_parallel:
        raise AssertionError(
            f"vLLM says use_sequence_parallel_moe={sp} for {cell.id}, "
            f"the table says {cell.is_sequence_parallel}"
        )
    device = ctx.device
    impl = default_impl(device)
    transport = cell.spec.open(ctx) if layout.uses_all2all else None
    ep = ps.get_ep_group()
    name = transport.name if transport is not None else "none (TP all-reduce)"
    results = []
    for case in cases:
        start = time.perf_counter()
        experts = MlpExperts(case.num_experts, case.hidden)
        source = source_tokens(case, layout.dp_rank(ctx.rank))
        full = source.to(device)
        if transport is not None:
            transport.prepare(case)
        layer = _layer(transport, case, experts, impl, ep.rank_in_group, ep.world_size, layout.tp)
        # fp8 rows travel with their scales alongside; under SP they are chunked as bytes
        # (padding a float8 tensor is not supported) and the layer views them back.
        scale = (full.x_scale,) if full.x_scale is not None else ()
        with dp_forward_context(ctx, case.tokens, sp):
            if sp:
                out = sp_moe_forward(
                    layer,
                    full.x.view(torch.uint8) if scale else full.x,
                    full.topk_ids,
                    full.topk_weights,
                    *scale,
                    trim=trim,
                )
            else:
                out = layer(full.x, full.topk_ids, full.topk_weights, *scale)
                if transport is not None:
                    out = reduce_tp_partials(out, layout.tp)
        want = mlp_moe_reference(source, experts)
        key = tolerance_key(impl, case.dtype)
        results.append(
            compared(
                cell.backend,
                layout.describe(),
                case,
                out,
                want,
                LAYER[key],
                start,
                experts=impl,
                transport=name,
                tolerance_key=key,
            )
        )
        if transport is not None:
            transport.after_case()
        ctx.heartbeat()
    if transport is not None:
        transport.close()
    return results


def _layer(
    transport, case: RoutingCase, experts: MlpExperts, impl: str, rank: int, world: int, tp: int
):
    """The layer's all-to-all and experts: ``layer(x, ids, weights, *scale)`` -> rows."""
    from vllm_ep_kit.backends.exchange import mlp_partial
    from vllm_ep_kit.backends.forward import reduce_tp_partials

    def layer(x, ids, weights, *scale):
        rows = Tokens(
            x=x.view(torch.float8_e4m3fn) if scale else x,
            topk_ids=ids,
            topk_weights=weights,
            x_scale=scale[0] if scale else None,
        )
        if transport is None:  # every rank holds every token: partials summed over TP
            return reduce_tp_partials(mlp_partial(case, rows, rank, world, experts, impl), tp)
        dispatched = transport.dispatch(rows)
        partial = mlp_partial(case, dispatched.tokens, rank, world, experts, impl)
        return transport.combine(dispatched, partial)

    return layer
