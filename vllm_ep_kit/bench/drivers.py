"""Each benchmarked exchange as timed stages: vLLM's backends and the baseline.

A driver turns one point's inputs into ``Prepared``: the stages to time
(dispatch, combine), a one-off round-trip check, the bytes that leave the
rank, and the context the stages need (vLLM's forward context for AGRS).
The round-trip check combines the dispatched hidden states themselves: each
token must come back multiplied by the number of ranks it was sent to (for
AGRS: every rank); fp8 rows are dequantised with the scales that travelled
with them first.  Timed combines of fp8 points send a bf16 buffer of the
received shape (what an expert would produce), so timing never includes
the check's dequantisation.  The calls are the ones vLLM's prepare/finalize
make, as in ``check``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vllm_ep_kit.bench.plan import BenchPoint, BenchSettings
from vllm_ep_kit.bench.timing import Stage
from vllm_ep_kit.bench.traffic import (
    RankInputs,
    agrs_remote_bytes,
    combine_row_bytes,
    dispatch_row_bytes,
    routed_remote_bytes,
)
from vllm_ep_kit.reference.moe import dequantize_fp8


@dataclass
class Prepared:
    stages: list[Stage]
    check: Callable[[], float | None]  # relative round-trip error; None: not checkable
    remote_bytes: int
    context: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)


def roundtrip_error(out: torch.Tensor, x: torch.Tensor, copies: torch.Tensor) -> float:
    """Largest deviation of ``out`` from ``x * copies`` per token, relative to its scale.

    ``x``: the values sent, in fp32 (fp8 rows dequantised).
    """
    if x.shape[0] == 0:
        return 0.0
    want = x.float() * copies.to(x.device).float().unsqueeze(1)
    got = out[: x.shape[0]].float()
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))


def _values(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """bf16 values of received rows: fp8 bytes dequantised with their scales."""
    if scale is None:
        return x
    return dequantize_fp8(x.view(torch.float8_e4m3fn), scale).to(torch.bfloat16)


def _sent(inputs: RankInputs, device) -> torch.Tensor:
    """fp32 values this rank sent (what the round trip must scale)."""
    return inputs.tokens.values().to(device)


# --------------------------------------------------------------------- baseline

def baseline(inputs: RankInputs, point: BenchPoint, settings: BenchSettings, rank: int,
             device, group) -> Prepared:
    """``all_to_all_single`` forward with the routed rows' bytes, and back with bf16 rows."""
    send_rows = torch.tensor(inputs.rows_to, dtype=torch.int64)
    recv_rows = torch.empty_like(send_rows)
    if device.type == "cuda":
        send_rows, recv_rows = send_rows.to(device), recv_rows.to(device)
    dist.all_to_all_single(recv_rows, send_rows, group=group)
    sent, got = send_rows.tolist(), recv_rows.tolist()
    disp, comb = dispatch_row_bytes(point.hidden, point.dtype, settings.top_k), \
        combine_row_bytes(point.hidden)

    def buffer(rows: list[int], width: int) -> torch.Tensor:
        return torch.empty(sum(rows) * width, dtype=torch.uint8, device=device)

    out_send, out_recv = buffer(sent, disp), buffer(got, disp)
    back_send, back_recv = buffer(got, comb), buffer(sent, comb)

    def dispatch(_):
        dist.all_to_all_single(out_recv, out_send, [r * disp for r in got],
                               [r * disp for r in sent], group=group)

    def combine(_):
        dist.all_to_all_single(back_recv, back_send, [r * comb for r in sent],
                               [r * comb for r in got], group=group)

    return Prepared(stages=[("dispatch", dispatch), ("combine", combine)],
                    check=lambda: None,
                    remote_bytes=routed_remote_bytes(inputs, rank, point, settings.top_k))


# ------------------------------------------------------------------------- AGRS

def agrs(ctx, inputs: RankInputs, point: BenchPoint, settings: BenchSettings) -> Prepared:
    """vLLM's ``AgRsAll2AllManager``: all-gatherv dispatch, reduce-scatterv combine."""
    from vllm_ep_kit.agrs_plumbing import agrs_manager, dp_forward_context

    manager, sp = agrs_manager(ctx)
    world = ctx.layout.dp
    device = ctx.device
    x, scale, ids, w = inputs.tokens.wire(device)
    extra = [scale] if scale is not None else None
    fallback = torch.zeros(point.tokens * world, point.hidden, dtype=torch.bfloat16,
                           device=device)

    def dispatch(_):
        return manager.dispatch(x, w, ids, is_sequence_parallel=sp, extra_tensors=extra)

    def combine(gathered, payload=None):
        if payload is None:
            payload = gathered[0] if scale is None else fallback
        return manager.combine(payload, is_sequence_parallel=sp)

    def check():
        gathered = dispatch(None)
        recv_scale = gathered[3][0] if scale is not None else None
        out = combine(gathered, _values(gathered[0], recv_scale))
        return roundtrip_error(out, _sent(inputs, device), torch.full((x.shape[0],), world))

    return Prepared(stages=[("dispatch", dispatch), ("combine", combine)], check=check,
                    remote_bytes=agrs_remote_bytes(point, world, settings.top_k),
                    context=dp_forward_context(ctx, (point.tokens,) * world, sp))


# -------------------------------------------------------------- FlashInfer NVLink

def one_sided(manager, inputs: RankInputs, point: BenchPoint, settings: BenchSettings,
              rank: int, device) -> Prepared:
    """vLLM's one-sided manager: ``MoeAlltoAll.dispatch`` and the manager's ``combine_into``."""
    world = len(inputs.rows_to)
    x, scale, ids, w = inputs.tokens.wire(device)
    payloads = [x, *([scale] if scale is not None else []), ids, w]
    max_tokens = point.tokens
    out = torch.empty(point.tokens, point.hidden, dtype=torch.bfloat16, device=device)
    fallback = torch.zeros(world, max_tokens, point.hidden, dtype=torch.bfloat16, device=device)

    def dispatch(_):
        return manager.moe_alltoall.dispatch(ids, payloads, max_tokens)

    def combine(received, payload=None):
        if payload is None:
            payload = received[0] if scale is None else fallback
        manager.combine_into(payload, max_tokens, out)
        return out

    def check():
        received = dispatch(None)
        values = _values(received[0], received[1] if scale is not None else None)
        return roundtrip_error(combine(received, values), _sent(inputs, device),
                               inputs.copies)

    return Prepared(stages=[("dispatch", dispatch), ("combine", combine)], check=check,
                    remote_bytes=routed_remote_bytes(inputs, rank, point, settings.top_k))


def two_sided(manager, inputs: RankInputs, point: BenchPoint, settings: BenchSettings,
              rank: int, device) -> Prepared:
    """vLLM's two-sided manager's workspaces with ``MnnvlMoe``: prepare + alltoallv, combine."""
    from flashinfer.comm.trtllm_alltoall import MnnvlMoe

    world = len(inputs.rows_to)
    x, scale, ids, w = inputs.tokens.wire(device)
    ws, prep_ws = manager.workspace_tensor, manager.prepare_workspace_tensor
    max_tokens = point.tokens
    fallback: dict[int, torch.Tensor] = {}

    def dispatch(_):
        info, _ids, _weights, _ = MnnvlMoe.mnnvl_moe_alltoallv_prepare_without_allgather(
            ids, w, None, prep_ws, max_tokens, rank, world, settings.num_experts,
            settings.num_experts, settings.top_k)
        recv_x = MnnvlMoe.mnnvl_moe_alltoallv(x, info, ws, rank, world)
        recv_scale = MnnvlMoe.mnnvl_moe_alltoallv(scale, info, ws, rank, world) \
            if scale is not None else None
        return info, recv_x, recv_scale

    def combine(state, payload=None):
        info, recv_x, _ = state
        if payload is None and scale is None:
            payload = recv_x
        elif payload is None:
            rows = recv_x.shape[0]
            if rows not in fallback:  # allocated once per shape, during warm-up
                fallback[rows] = torch.zeros(rows, point.hidden, dtype=torch.bfloat16,
                                             device=device)
            payload = fallback[rows]
        return MnnvlMoe.mnnvl_moe_alltoallv_combine(payload, info, ws, ep_rank=rank,
                                                    ep_size=world, top_k=settings.top_k,
                                                    token_count=point.tokens)

    def check():
        state = dispatch(None)
        values = _values(state[1], state[2])
        return roundtrip_error(combine(state, values), _sent(inputs, device), inputs.copies)

    return Prepared(stages=[("dispatch", dispatch), ("combine", combine)], check=check,
                    remote_bytes=routed_remote_bytes(inputs, rank, point, settings.top_k))
