"""Each benchmarked exchange as timed stages: a backend's transport and the baseline.

A driver turns one point's inputs into ``Prepared``: the stages to time
(dispatch, combine), a one-off round-trip check, the bytes that leave the
rank, and the context the stages need (the transport's: vLLM's forward
context for AGRS).  The round-trip check combines the dispatched hidden
states themselves: each token must come back multiplied by the number of
ranks it was sent to; fp8 rows are dequantised with the scales that
travelled with them first.  Timed combines of fp8 points send a bf16 buffer
of the received shape (what an expert would produce), so timing never
includes the check's dequantisation.  The transports make the calls vLLM's
prepare/finalize make, as in ``check``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vllm_ep_kit.commands.bench.plan import BenchPoint, BenchSettings
from vllm_ep_kit.commands.bench.timing import Stage
from vllm_ep_kit.commands.bench.traffic import (
    RankInputs,
    agrs_remote_bytes,
    combine_row_bytes,
    dispatch_row_bytes,
    point_case,
    routed_remote_bytes,
)


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


def _sent(inputs: RankInputs, device) -> torch.Tensor:
    """fp32 values this rank sent (what the round trip must scale)."""
    return inputs.tokens.values().to(device)


# --------------------------------------------------------------------- baseline


def baseline(
    inputs: RankInputs, point: BenchPoint, settings: BenchSettings, rank: int, device, group
) -> Prepared:
    """``all_to_all_single`` forward with the routed rows' bytes, and back with bf16 rows."""
    send_rows = torch.tensor(inputs.rows_to, dtype=torch.int64)
    recv_rows = torch.empty_like(send_rows)
    if device.type == "cuda":
        send_rows, recv_rows = send_rows.to(device), recv_rows.to(device)
    dist.all_to_all_single(recv_rows, send_rows, group=group)
    sent, got = send_rows.tolist(), recv_rows.tolist()
    disp, comb = (
        dispatch_row_bytes(point.hidden, point.dtype, settings.top_k),
        combine_row_bytes(point.hidden),
    )

    def buffer(rows: list[int], width: int) -> torch.Tensor:
        return torch.empty(sum(rows) * width, dtype=torch.uint8, device=device)

    out_send, out_recv = buffer(sent, disp), buffer(got, disp)
    back_send, back_recv = buffer(got, comb), buffer(sent, comb)

    def dispatch(_):
        dist.all_to_all_single(
            out_recv, out_send, [r * disp for r in got], [r * disp for r in sent], group=group
        )

    def combine(_):
        dist.all_to_all_single(
            back_recv, back_send, [r * comb for r in sent], [r * comb for r in got], group=group
        )

    return Prepared(
        stages=[("dispatch", dispatch), ("combine", combine)],
        check=lambda: None,
        remote_bytes=routed_remote_bytes(inputs, rank, point, settings.top_k),
    )


# ------------------------------------------------------------------- a backend


def exchange(
    transport, inputs: RankInputs, point: BenchPoint, settings: BenchSettings, rank: int, world: int
) -> Prepared:
    """Any backend's transport, prepared for ``point``: dispatch, then combine.

    The round trip combines the dispatched values themselves: a token comes
    back once per rank it reached (``delivers_to``: its experts' owners, or
    every rank for an all-gather).  Timed combines of fp8 points send a bf16
    buffer of the received shape, allocated once per shape during warm-up.
    """
    from vllm_ep_kit.backends.spec import TO_GROUP

    case = point_case(point, settings, world)
    transport.prepare(case)
    device = transport.ctx.device
    tokens = inputs.tokens.to(device)
    fallback: dict[tuple, torch.Tensor] = {}

    def dispatch(_):
        return transport.dispatch(tokens)

    def combine(dispatched, payload=None):
        if payload is None and dispatched.tokens.x_scale is None:
            payload = dispatched.tokens.x
        elif payload is None:
            shape = tuple(dispatched.tokens.x.shape)
            if shape not in fallback:
                fallback[shape] = torch.zeros(shape, dtype=torch.bfloat16, device=device)
            payload = fallback[shape]
        return transport.combine(dispatched, payload)

    group = transport.backend.delivers_to == TO_GROUP
    copies = torch.full((tokens.x.shape[0],), world) if group else inputs.copies

    def check():
        dispatched = dispatch(None)
        values = dispatched.tokens.values().to(torch.bfloat16)
        return roundtrip_error(combine(dispatched, values), _sent(inputs, device), copies)

    remote = (
        agrs_remote_bytes(point, world, settings.top_k)
        if group
        else routed_remote_bytes(inputs, rank, point, settings.top_k)
    )
    return Prepared(
        stages=[("dispatch", dispatch), ("combine", combine)],
        check=check,
        remote_bytes=remote,
        context=transport.forward_context(case),
    )
