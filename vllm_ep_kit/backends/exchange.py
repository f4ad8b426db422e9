"""One case through any backend's transport on this rank, checked against the oracle.

``rank_cases`` is the rank function of ``check`` and of the manager and
kernel round-trip tests: per case it builds this rank's input, dispatches
through the backend's transport, applies this rank's experts to what it
received, combines, and compares with the fp32 reference of the source's own
tokens.  Where the backend's sources are DP ranks (AGRS) it follows vLLM's
MoE layer: under sequence parallelism the input is the TP chunk cut by vLLM's
``sequence_parallel_chunk`` and the output is all-gathered over TP; without
it the EP partials are all-reduced over TP.  Where the transport knows the
exact rows dispatch must deliver, they are compared too.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import torch

from vllm_ep_kit.backends.spec import DP_SOURCES, Backend
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import (
    RoutingCase,
    Tokens,
    moe_partial,
    moe_reference,
    source_tokens,
)
from vllm_ep_kit.reference.results import CaseResult, oracle_result, same_rows

if TYPE_CHECKING:
    from vllm_ep_kit.harness.rank import RankContext
    from vllm_ep_kit.reference.mlp_moe import MlpExperts


def oracle_partial(
    case: RoutingCase, got: Tokens, rank: int, world: int, ignore_ownership: bool = False
) -> torch.Tensor:
    """The oracle's experts owned by ``rank`` over every received row (``moe_partial``).

    ``ignore_ownership`` is the negative control: every slot counts, whatever
    id or marker it holds, so tokens are counted on every rank they reach.
    """
    if ignore_ownership:
        got = Tokens(
            x=got.x,
            topk_ids=got.topk_ids.long().remainder(case.num_experts),
            topk_weights=got.topk_weights,
            x_scale=got.x_scale,
        )
        return moe_reference(got, case.num_experts).to(case.combine_dtype)
    return moe_partial(got, case.num_experts, world, rank).to(case.combine_dtype)


def mlp_partial(
    case: RoutingCase, got: Tokens, rank: int, world: int, experts: MlpExperts, impl: str
) -> torch.Tensor:
    """SiLU-MLP experts owned by ``rank`` over the received rows (any leading shape), computed
    by ``impl`` (vLLM's ``fused_experts`` or the torch reference) in bf16 (fp32 cases: fp32)."""
    from vllm_ep_kit.backends.vllm_experts import expert_partial

    lead, values = got.x.shape[:-1], got.values()  # values: hidden wide (fp4 packs two)
    flat = Tokens(
        x=values.reshape(-1, values.shape[-1]),
        topk_ids=got.topk_ids.reshape(-1, case.top_k),
        topk_weights=got.topk_weights.reshape(-1, case.top_k),
    )
    compute = torch.float32 if case.dtype == "fp32" else torch.bfloat16
    partial = expert_partial(impl, flat, experts, world, rank, dtype=compute)
    return partial.reshape(*lead, partial.shape[-1]).to(case.combine_dtype)


def source_input(case: RoutingCase, layout: ParallelLayout, rank: int, sp: bool) -> Tokens:
    """The MoE input of global ``rank``: its DP rank's tokens, TP-chunked under SP."""
    full = source_tokens(case, layout.dp_rank(rank))
    if not sp:
        return full
    tp, tp_rank = layout.tp, layout.tp_rank(rank)
    chunk = -(-full.x.shape[0] // tp)  # ceil, as vLLM's sequence_parallel_chunk pads

    def take(t: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros((chunk * tp,) + tuple(t.shape[1:]), dtype=t.dtype)
        padded[: t.shape[0]] = t
        return padded[tp_rank * chunk : (tp_rank + 1) * chunk]

    return Tokens(
        x=take(full.x), topk_ids=take(full.topk_ids), topk_weights=take(full.topk_weights)
    )


def _source_of(case: RoutingCase, layout: ParallelLayout | None, sp: bool, rank: int) -> Tokens:
    """What global ``rank`` feeds the MoE layer (a DP-sourced backend's expected dispatch)."""
    assert layout is not None, "DP-sourced backends run inside vLLM's parallel state"
    return source_input(case, layout, rank, sp)


def uses_sequence_parallel(ctx: RankContext, backend: Backend) -> bool:
    """vLLM's verdict for this rank's config, for backends whose sources are DP ranks."""
    return (
        backend.sources == DP_SOURCES
        and ctx.layout is not None
        and ctx.vllm_config is not None
        and bool(ctx.vllm_config.parallel_config.use_sequence_parallel_moe)
    )


def rank_cases(
    ctx: RankContext, backend: Backend, cases: list[RoutingCase], ignore_ownership: bool = False
) -> list[CaseResult]:
    """Every case through ``backend``'s transport on this rank (see the module docstring)."""
    from vllm_ep_kit.backends.forward import gather_sp_chunks, reduce_tp_partials

    layout = ctx.layout
    sp = uses_sequence_parallel(ctx, backend)
    transport = backend.open(ctx)
    where = layout.describe() if layout is not None else f"world={ctx.world_size}"
    results = []
    for case in cases:
        start = time.perf_counter()
        transport.prepare(case)
        if backend.sources == DP_SOURCES:
            assert layout is not None, "DP-sourced backends run inside vLLM's parallel state"
            full = source_tokens(case, layout.dp_rank(ctx.rank))
            mine = source_input(case, layout, ctx.rank, sp)
            if sp:  # vLLM's own chunking must agree with the oracle's
                # Imported only here: vLLM's models package queries compiled ops at import
                # time, which a GPU host running vLLM's Python sources alone does not have.
                from vllm.model_executor.models.utils import sequence_parallel_chunk_impl

                chunked = sequence_parallel_chunk_impl(full.x.to(ctx.device))
                assert torch.equal(chunked.cpu(), mine.x), "sequence_parallel_chunk disagrees"
        else:
            if len(case.tokens) != transport.world:
                raise ValueError(
                    f"case {case.describe()}: {len(case.tokens)} sources, "
                    f"the EP group has {transport.world} ranks"
                )
            full = mine = source_tokens(case, transport.rank)
        with transport.forward_context(case):
            dispatched = transport.dispatch(mine)
            expected = transport.expected_dispatch(functools.partial(_source_of, case, layout, sp))
            exact = None if expected is None else same_rows(dispatched.tokens, expected)
            partial = oracle_partial(
                case, dispatched.tokens, transport.rank, transport.world, ignore_ownership
            )
            out = transport.combine(dispatched, partial)
        if backend.sources == DP_SOURCES:
            assert layout is not None
            out = (
                gather_sp_chunks(out, full.x.shape[0]) if sp else reduce_tp_partials(out, layout.tp)
            )
        if out.is_cuda:
            torch.cuda.synchronize()
        results.append(oracle_result(backend.name, where, case, out, full, start, exact))
        transport.after_case()
        ctx.heartbeat()
    transport.close()
    return results
