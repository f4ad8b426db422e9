"""FlashInfer's NVLink all-to-alls driven directly (no vLLM), checked against the oracle.

The kernel tests' rank functions: FlashInfer's objects are built on the
harness's gloo world group (as vLLM's managers do over the EP group's CPU
group) by the backends' ``Direct*`` transports, and each case goes through
``exchange.rank_cases`` like every other backend.  Ranks may share a GPU.
"""

from __future__ import annotations

from vllm_ep_kit.reference.moe import RoutingCase
from vllm_ep_kit.results import CaseResult


def default_cases(world: int, fp8: bool = True) -> list[RoutingCase]:
    """Even (64 x 2048 bf16, top-4 of 16), uneven, one rank empty, fp32, and fp8 + scales."""
    cases = [RoutingCase(tokens=(64,) * world, hidden=2048, num_experts=16, top_k=4),
             RoutingCase(tokens=tuple(3 + 4 * r for r in range(world)), hidden=256),
             RoutingCase(tokens=tuple(0 if r == world - 1 else 7 for r in range(world)),
                         hidden=256),
             RoutingCase(tokens=(16,) * world, hidden=512, dtype="fp32")]
    if fp8:
        cases += [RoutingCase(tokens=(64,) * world, hidden=2048, dtype="fp8"),
                  RoutingCase(tokens=tuple(0 if r == 0 else 5 + r for r in range(world)),
                              hidden=512, dtype="fp8")]
    return cases


def rank_one_sided_roundtrip(ctx, cases: list[RoutingCase],
                             ignore_ownership: bool = False) -> list[CaseResult]:
    """Every case through a ``MoeAlltoAll`` built here on the world group."""
    from vllm_ep_kit.backends.flashinfer_one_sided import DIRECT
    from vllm_ep_kit.exchange import rank_cases

    return rank_cases(ctx, DIRECT, cases, ignore_ownership)


def rank_moe_ep_roundtrip(ctx, cases: list[RoutingCase],
                          ignore_ownership: bool = False) -> list[CaseResult]:
    """Every case through ``flashinfer.moe_ep``'s one-sided communication built here."""
    from vllm_ep_kit.backends.flashinfer_one_sided import DIRECT_MOE_EP
    from vllm_ep_kit.exchange import rank_cases

    return rank_cases(ctx, DIRECT_MOE_EP, cases, ignore_ownership)


def rank_two_sided_roundtrip(ctx, cases: list[RoutingCase],
                             ignore_ownership: bool = False) -> list[CaseResult]:
    """Every case through ``MnnvlMoe`` workspaces built here on the world group."""
    from vllm_ep_kit.backends.flashinfer_two_sided import DIRECT
    from vllm_ep_kit.exchange import rank_cases

    return rank_cases(ctx, DIRECT, cases, ignore_ownership)
