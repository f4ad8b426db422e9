"""The exact MoE oracle: deterministic inputs, experts with known outputs, fp32 sums.

Shared by tests, ``check`` and ``bench``.  Every rank can regenerate every
other rank's inputs from (seed, source id), so expected results never depend
on the communication being tested.  Experts are ``f_e(x) = s_e * x`` with
scales exactly representable in bf16, so a token routed to the wrong expert
or rank changes the result by far more than any rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vllm_ep_kit.reference.formats import (
    FORMATS,
    alignment_problem,
    dequantize,
    quantize,
    to_wire,
)

# The payload dtypes ``check`` and ``bench`` offer (every format of ``FORMATS`` runs in
# the kernel tests).
DTYPES = {name: FORMATS[name].value_dtype for name in ("bf16", "fp16", "fp32", "fp8")}
FP8_GROUP = FORMATS["fp8"].group  # fp8 scales per (token, 128 columns), as vLLM's block fp8


@dataclass(frozen=True)
class RoutingCase:
    """One dispatch + combine problem; ``tokens[i]`` is source i's token count."""

    tokens: tuple[int, ...]
    num_experts: int = 16
    top_k: int = 4
    hidden: int = 64
    dtype: str = "bf16"  # a payload format of ``formats.FORMATS``
    seed: int = 1234
    scale_alignment: int = 0  # pad scale rows to this many columns' worth (vLLM mx_alignment)

    def __post_init__(self) -> None:
        if self.dtype not in FORMATS:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {sorted(FORMATS)}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k}: expected 1..num_experts={self.num_experts}")
        problem = alignment_problem(self.dtype, self.hidden, self.scale_alignment)
        if problem:
            raise ValueError(problem)
        if any(n < 0 for n in self.tokens):
            raise ValueError(f"tokens={self.tokens}: counts must be >= 0")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The hidden-state tensor's dtype (packed fp4: uint8)."""
        return FORMATS[self.dtype].value_dtype

    @property
    def combine_dtype(self) -> torch.dtype:
        """The expert output's dtype (quantised inputs produce bf16 outputs)."""
        return torch.bfloat16 if FORMATS[self.dtype].quantised else self.torch_dtype

    @property
    def x_bytes_per_token(self) -> int:
        return FORMATS[self.dtype].x_bytes(self.hidden)

    @property
    def scale_bytes_per_token(self) -> int:
        return FORMATS[self.dtype].scale_row_bytes(self.hidden, self.scale_alignment)

    def describe(self) -> str:
        return (
            f"tokens={list(self.tokens)} E={self.num_experts} k={self.top_k} "
            f"h={self.hidden} {self.dtype}"
        )


@dataclass
class Tokens:
    x: torch.Tensor  # [n, hidden] in the case's dtype
    topk_ids: torch.Tensor  # [n, top_k] int32, distinct experts per token
    topk_weights: torch.Tensor  # [n, top_k] float32, each row sums to 1
    x_scale: torch.Tensor | None = None  # [n, scale columns], for a quantised ``x``

    def values(self) -> torch.Tensor:
        """The hidden states in fp32 (dequantised as the dtypes of ``x`` and its scales
        say: ``formats.format_of``)."""
        return dequantize(self.x, self.x_scale)

    def to(self, device) -> Tokens:
        """The same tokens on ``device`` (a rank's GPU)."""
        return Tokens(
            x=self.x.to(device),
            topk_ids=self.topk_ids.to(device),
            topk_weights=self.topk_weights.to(device),
            x_scale=None if self.x_scale is None else self.x_scale.to(device),
        )

    def wire(self, device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(x as it travels, its scales or None, top-k ids, weights) on ``device``.

        Quantised rows travel as raw bytes (the all-to-all kernels move bytes)
        with their block scales as a payload of their own, as vLLM sends them.
        """
        t = self.to(device)
        return to_wire(t.x), to_wire(t.x_scale), t.topk_ids, t.topk_weights


def source_tokens(case: RoutingCase, source: int) -> Tokens:
    """The tokens of source ``source`` (a DP rank, or a rank in DP mode)."""
    n = case.tokens[source]
    # a generator per (seed, source): every rank makes the same map, so any one-to-one map serves
    stream = case.seed * 1000003 + source  # pragma: no mutate (equivalent: any 1:1 map serves)
    gen = torch.Generator().manual_seed(stream)
    x, x_scale = quantize(
        case.dtype, torch.randn(n, case.hidden, generator=gen), case.scale_alignment
    )
    ids = torch.empty(0, case.top_k, dtype=torch.int32)
    if n:
        picks = [torch.randperm(case.num_experts, generator=gen)[: case.top_k] for _ in range(n)]
        ids = torch.stack(picks).to(torch.int32)
    # weights from 0.1 to 1.1 before normalising: up to 11x apart within a token, so a
    # combine that swaps two of a token's weights shows
    weights = torch.rand(n, case.top_k, generator=gen) + 0.1
    weights = weights / weights.sum(dim=1, keepdim=True)
    return Tokens(x=x, topk_ids=ids, topk_weights=weights, x_scale=x_scale)


def expert_scales(num_experts: int, device=None) -> torch.Tensor:
    """s_e = 1 + (e mod 7) / 8: distinct neighbours, exact in bf16."""
    return 1.0 + (torch.arange(num_experts, device=device) % 7).float() / 8.0


def expert_owner(num_experts: int, ep_size: int, device=None) -> torch.Tensor:
    """EP rank owning each global expert (contiguous blocks, as vLLM places them)."""
    if num_experts % ep_size:
        raise ValueError(f"num_experts={num_experts} is not divisible by ep_size={ep_size}")
    return torch.arange(num_experts, device=device) // (num_experts // ep_size)


def _routed(tokens: Tokens, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight x expert scale of each routed slot, its expert id made safe to index): ids
    outside [0, num_experts), which received slots that were never sent may hold, weigh 0.

    Runs where ``tokens`` are, over any leading shape (a one-sided receive buffer is
    [ranks, max_tokens, ...]).  Its tables are built where the ids are, with no host copy or
    data-dependent shape: it runs inside a CUDA graph capture.
    """
    ids = tokens.topk_ids.long()
    valid = (ids >= 0) & (ids < num_experts)
    safe = ids.clamp(0, num_experts - 1)
    coeff = tokens.topk_weights.float() * expert_scales(num_experts, ids.device)[safe] * valid
    return coeff, safe


def moe_partial(tokens: Tokens, num_experts: int, ep_size: int, ep_rank: int) -> torch.Tensor:
    """fp32 sum over the routed experts that EP rank ``ep_rank`` of ``ep_size`` owns."""
    coeff, safe = _routed(tokens, num_experts)
    owner = expert_owner(num_experts, ep_size, safe.device)
    coeff = coeff * (owner[safe] == ep_rank).float()
    return tokens.values() * coeff.sum(dim=-1, keepdim=True)


def moe_reference(tokens: Tokens, num_experts: int) -> torch.Tensor:
    """The full MoE output of every token, in fp32 (every expert counts)."""
    coeff, _ = _routed(tokens, num_experts)
    return tokens.values() * coeff.sum(dim=-1, keepdim=True)


def concat_tokens(parts: list[Tokens]) -> Tokens:
    """The rows of ``parts`` one after another (scales too, where every part has them)."""
    scales = [p.x_scale for p in parts if p.x_scale is not None]
    return Tokens(
        x=torch.cat([p.x for p in parts]),
        topk_ids=torch.cat([p.topk_ids for p in parts]),
        topk_weights=torch.cat([p.topk_weights for p in parts]),
        x_scale=torch.cat(scales) if len(scales) == len(parts) else None,
    )


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference; infinite where the shapes differ."""
    if actual.shape != expected.shape:
        return math.inf
    if actual.numel() == 0:
        return 0.0
    return float((actual.float() - expected.float()).abs().max())
