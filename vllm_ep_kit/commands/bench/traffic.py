"""Bench inputs and byte accounting: what each rank sends, and to whom.

Inputs come from the oracle's generator (``reference.moe.source_tokens``), so
every backend and the baseline move the same tokens.  A token-routed
all-to-all sends a token once to each distinct EP rank owning one of its
experts (the FlashInfer backends deduplicate by rank); the combine sends one
bf16 row back per such copy.  AGRS gathers every token to every rank and
reduce-scatters the outputs.  Bandwidth counts bytes that leave the rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_ep_kit.commands.bench.plan import BenchPoint, BenchSettings
from vllm_ep_kit.reference.moe import RoutingCase, Tokens, expert_owner, source_tokens

COMBINE_ELEMENT_BYTES = 2  # combine payloads are bf16 (fp8 inputs too, as vLLM combines)


def point_case(point: BenchPoint, settings: BenchSettings, world: int) -> RoutingCase:
    return RoutingCase(
        tokens=(point.tokens,) * world,
        num_experts=settings.num_experts,
        top_k=settings.top_k,
        hidden=point.hidden,
        dtype=point.dtype,
    )


def dispatch_row_bytes(hidden: int, dtype: str, top_k: int) -> int:
    """Hidden states (+ fp8 block scales) + int32 expert ids + fp32 weights of one token."""
    case = RoutingCase(tokens=(0,), num_experts=top_k, top_k=top_k, hidden=hidden, dtype=dtype)
    return case.x_bytes_per_token + case.scale_bytes_per_token + top_k * 8


def combine_row_bytes(hidden: int) -> int:
    return hidden * COMBINE_ELEMENT_BYTES


def destinations(topk_ids: torch.Tensor, num_experts: int, world: int) -> torch.Tensor:
    """[n, world] bool: which EP ranks each token goes to (owners of its experts)."""
    owners = expert_owner(num_experts, world)[topk_ids.long()]
    hit = torch.zeros(topk_ids.shape[0], world, dtype=torch.bool)
    return hit.scatter_(1, owners, True)


@dataclass
class RankInputs:
    """One rank's tokens for a point, and what a token-routed exchange moves."""

    tokens: Tokens  # on the CPU
    rows_to: list[int]  # rows this rank sends to each rank (itself included)
    copies: torch.Tensor  # [n] distinct destination ranks per token (round-trip factor)


def rank_inputs(point: BenchPoint, settings: BenchSettings, rank: int, world: int) -> RankInputs:
    tokens = source_tokens(point_case(point, settings, world), rank)
    hit = destinations(tokens.topk_ids, settings.num_experts, world)
    return RankInputs(tokens=tokens, rows_to=[int(v) for v in hit.sum(0)], copies=hit.sum(1))


def routed_remote_bytes(inputs: RankInputs, rank: int, point: BenchPoint, top_k: int) -> int:
    """Bytes leaving this rank in a token-routed dispatch + combine.

    Combine rows return to their sources, so what this rank sends back equals
    what it received; with random routing that matches what it sent, and the
    count here uses its own dispatch rows for both directions.
    """
    remote = sum(inputs.rows_to) - inputs.rows_to[rank]
    return remote * (
        dispatch_row_bytes(point.hidden, point.dtype, top_k) + combine_row_bytes(point.hidden)
    )


def agrs_remote_bytes(point: BenchPoint, world: int, top_k: int) -> int:
    """All-gather: own rows to every other rank; reduce-scatter: the others' rows out."""
    n = point.tokens
    return n * (world - 1) * dispatch_row_bytes(point.hidden, point.dtype, top_k) + n * (
        world - 1
    ) * combine_row_bytes(point.hidden)
