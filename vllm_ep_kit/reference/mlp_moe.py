"""The fp32 MoE reference with real expert weights (SiLU-gated MLPs), for MoE layer tests.

The dispatch/combine oracle in ``moe.py`` uses scalar experts so that any
misrouting shows; a layer test also needs the arithmetic a MoE layer does:
``f_e(x) = W2_e (silu(W1_e x) * W3_e x)`` summed over the routed experts with
the router weights.  Weights are regenerated from a seed on every rank, so the
reference is computed on one process from the same weights the ranks use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_ep_kit.reference.moe import Tokens, expert_owner


@dataclass(frozen=True)
class MlpExperts:
    """``num_experts`` SiLU-gated MLPs hidden -> intermediate -> hidden."""

    num_experts: int
    hidden: int
    intermediate: int = 32
    seed: int = 4321

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13 [E, 2I, H], w2 [E, H, I]) in fp32, the same on every rank.

        Values are exactly representable in bf16, so a layer holding bf16
        weights holds these very weights and the fp32 reference uses them too.
        """
        gen = torch.Generator().manual_seed(self.seed)
        w13 = (
            torch.randn(self.num_experts, 2 * self.intermediate, self.hidden, generator=gen)
            / self.hidden**0.5
        )
        w2 = (
            torch.randn(self.num_experts, self.hidden, self.intermediate, generator=gen)
            / self.intermediate**0.5
        )
        return w13.bfloat16().float(), w2.bfloat16().float()


def mlp_moe_partial(
    tokens: Tokens,
    experts: MlpExperts,
    ep_size: int = 1,
    ep_rank: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sum over routed experts owned by ``ep_rank`` (all if None) of weight * f_e(x), fp32 out.

    ``dtype`` is the precision the expert matmuls run in (the layer under test
    may compute in bf16; the reference uses fp32).  Runs where ``tokens`` are
    (CPU or GPU); ids outside [0, num_experts) match no expert and add 0.
    """
    x = tokens.values().to(dtype)
    w13, w2 = (w.to(dtype) for w in experts.weights())
    # the tokens' device (a GPU rank's weights may be built on the CPU); the mutation run
    # has no GPU, where every tensor is on the CPU already (the GPU runs catch a wrong one)
    w13, w2 = (w.to(x.device) for w in (w13, w2))  # pragma: no mutate (equivalent: CPU host)
    ids = tokens.topk_ids.long()
    out = x.new_zeros(x.shape[0], experts.hidden, dtype=torch.float32)
    owner = expert_owner(experts.num_experts, ep_size)
    inter = experts.intermediate
    for e in range(experts.num_experts):
        if ep_rank is not None and int(owner[e]) != ep_rank:
            continue
        rows, slots = (ids == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        h = x[rows] @ w13[e].T
        y = (torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]) @ w2[e].T
        weight = tokens.topk_weights[rows, slots].float().unsqueeze(1)
        out.index_add_(0, rows, y.float() * weight)
    return out


def mlp_moe_reference(tokens: Tokens, experts: MlpExperts) -> torch.Tensor:
    """The full MoE output of every token in fp32, on one process."""
    return mlp_moe_partial(tokens, experts)


def softmax_topk(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32, ids int32) of a softmax top-k router over the last dimension of
    ``logits`` (any leading shape), weights renormalised to sum 1.

    The routing a MoE layer built with ``renormalize=True`` does, in fp32 on one process.
    """
    weights, ids = torch.softmax(logits.float(), dim=-1).topk(top_k)
    return weights / weights.sum(dim=-1, keepdim=True), ids.to(torch.int32)
