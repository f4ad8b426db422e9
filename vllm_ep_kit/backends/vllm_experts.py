"""vLLM's own MoE expert kernels and ``FusedMoE`` layer, fed the reference's weights.

The layer matrix moves tokens through vLLM's real all-to-all plumbing; this
module lets the expert computation be vLLM's too where its compiled kernels
load: ``fused_experts`` (Triton GEMMs plus ``_moe_C``'s
``moe_align_block_size`` and ``_C``'s ``silu_and_mul``) with an EP
``expert_map``, and the whole layer built by ``FusedMoEFactory`` with weights
loaded through its own ``weight_loader`` and routed by its own router.  Where
the kernels are missing (CPU hosts, a sources-only vLLM) :func:`kernels_missing`
says why and callers fall back to the torch experts of ``reference.mlp_moe``,
recording which ran.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

import torch

from vllm_ep_kit.harness.probes import vllm_moe_kernels_missing as kernels_missing
from vllm_ep_kit.reference.mlp_moe import (
    MlpExperts,
    mlp_moe_partial,
    mlp_moe_reference,
    softmax_topk,
)
from vllm_ep_kit.reference.moe import RoutingCase, Tokens, expert_owner, source_tokens
from vllm_ep_kit.reference.results import CaseResult, compared
from vllm_ep_kit.reference.tolerance import LAYER

if TYPE_CHECKING:
    from vllm_ep_kit.harness.rank import RankContext

EXPERT_IMPLS = ("torch", "vllm")


def default_impl(device: torch.device) -> str:
    """ "vllm" on a GPU rank where vLLM's kernels run, else the torch reference experts."""
    return "vllm" if device.type == "cuda" and not kernels_missing() else "torch"


def tolerance_key(impl: str, dtype: str) -> str:
    """Which ``reference.tolerance.LAYER`` entry applies to experts computed by ``impl``.

    vLLM's Triton GEMMs read fp32 as TF32, and in bf16 they keep both GEMM
    outputs and the activation in bf16 (the torch experts keep fp32 between).
    """
    return {("vllm", "fp32"): "tf32", ("vllm", "bf16"): "bf16-fused"}.get((impl, dtype), dtype)


def expert_partial(
    impl: str,
    tokens: Tokens,
    experts: MlpExperts,
    ep_size: int = 1,
    ep_rank: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """fp32 output of the experts ``ep_rank`` owns over ``tokens``, computed by ``impl``."""
    if impl == "torch":
        return mlp_moe_partial(tokens, experts, ep_size, ep_rank, dtype=dtype)
    if impl == "vllm":
        return fused_experts_partial(tokens, experts, ep_size, ep_rank, dtype=dtype)
    raise ValueError(f"impl={impl!r}: expected one of {EXPERT_IMPLS}")


def local_expert_map(
    num_experts: int, ep_size: int, ep_rank: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(global ids this rank owns, vLLM-style ``expert_map``: global -> local id or -1).

    The map has one extra entry, ``num_experts``, never owned: slots whose id
    is not a valid expert of this rank are pointed there, so vLLM skips them.
    """
    owner = expert_owner(num_experts, ep_size)
    local = (owner == ep_rank).nonzero().squeeze(1)
    expert_map = torch.full((num_experts + 1,), -1, dtype=torch.int32)
    expert_map[local] = torch.arange(local.numel(), dtype=torch.int32)
    return local.to(device), expert_map.to(device)


def fused_experts_partial(
    tokens: Tokens,
    experts: MlpExperts,
    ep_size: int = 1,
    ep_rank: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """vLLM's ``fused_experts`` on this EP rank's experts, as an EP rank of a layer runs it.

    Same contract as ``mlp_moe_partial``: ids outside [0, num_experts) or owned
    by another rank add 0.  Only rows with at least one local expert reach the
    kernel (received buffers may hold junk rows that must not be read).
    """
    from vllm.model_executor.layers.fused_moe import fused_experts

    if ep_rank is None:
        if ep_size != 1:
            raise ValueError(f"ep_rank=None means all experts: expected ep_size=1, got {ep_size}")
        ep_rank = 0
    x = tokens.values()
    device = x.device
    num = experts.num_experts
    ids = tokens.topk_ids.long()
    local, expert_map = local_expert_map(num, ep_size, ep_rank, device)
    mine = (ids >= 0) & (ids < num)
    mine &= expert_map[ids.clamp(0, num - 1)] >= 0
    out = torch.zeros(x.shape[0], experts.hidden, dtype=torch.float32, device=device)
    rows = mine.any(dim=1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return out
    w13, w2 = (
        w[local.cpu()].to(device=device, dtype=dtype).contiguous() for w in experts.weights()
    )
    routed = torch.where(mine, ids, num)[rows].to(torch.int32).contiguous()
    y = fused_experts(
        x[rows].to(dtype).contiguous(),
        w13,
        w2,
        tokens.topk_weights[rows].float().contiguous(),
        routed,
        global_num_experts=num + 1,
        expert_map=expert_map,
    )
    out[rows] = y.float()
    return out


_LAYER_NAMES = itertools.count()


def build_fused_moe_layer(
    vllm_config: Any, experts: MlpExperts, top_k: int, dtype: torch.dtype, device: torch.device
) -> Any:
    """vLLM's MoE layer (``FusedMoEFactory``) holding ``experts``' weights, ready to run.

    Weights go through the layer's own ``weight_loader`` (which keeps only this
    EP rank's experts and this TP rank's shard) and its quantisation method's
    ``process_weights_after_loading`` (which picks the expert kernels), as
    vLLM's model loader does.  The router is vLLM's softmax top-k, renormalised.
    """
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.fused_moe import FusedMoEFactory
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.v1.worker import workspace

    if not workspace.is_workspace_manager_initialized():
        # vLLM's GPU worker sets this up; the layer's kernels take scratch buffers from it.
        workspace.init_workspace_manager(device)

    prefix = f"vllm_ep_kit.moe{next(_LAYER_NAMES)}.experts"
    with set_current_vllm_config(vllm_config), torch.device(device):
        layer = FusedMoEFactory(
            num_experts=experts.num_experts,
            top_k=top_k,
            hidden_size=experts.hidden,
            intermediate_size=experts.intermediate,
            params_dtype=dtype,
            renormalize=True,
            prefix=prefix,
        )
    params = dict(layer.named_parameters())
    w13_name = _one_param(params, "w13_weight")
    w2_name = _one_param(params, "w2_weight")
    w13, w2 = experts.weights()
    inter = experts.intermediate
    for expert in range(experts.num_experts):
        for name, shard, weight in (
            (w13_name, "w1", w13[expert, :inter]),
            (w13_name, "w3", w13[expert, inter:]),
            (w2_name, "w2", w2[expert]),
        ):
            param = params[name]
            param.weight_loader(param, weight.to(dtype), name, shard_id=shard, expert_id=expert)  # type: ignore[attr-defined]  # vLLM sets it on its parameters
    with set_current_vllm_config(vllm_config):
        for module in layer.modules():
            method = getattr(module, "quant_method", None)
            if isinstance(method, QuantizeMethodBase):
                method.process_weights_after_loading(module)
    return layer


def layer_kernels(layer: torch.nn.Module) -> str:
    """Which expert kernels vLLM picked for ``layer`` (method / backend / experts class)."""
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    for module in layer.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase):
            backend = getattr(method, "unquantized_backend", None)
            experts = getattr(method, "experts_cls", None)
            return "/".join(
                [
                    type(method).__name__,
                    str(getattr(backend, "value", backend)),
                    getattr(experts, "__name__", str(experts)),
                ]
            )
    return "no quantisation method found"


def _one_param(params: dict[str, Any], suffix: str) -> str:
    names = [n for n in params if n.endswith(suffix)]
    if len(names) != 1:
        raise RuntimeError(
            f"vLLM's MoE layer has {len(names)} parameters named *{suffix} "
            f"(expected one); its parameters: {sorted(params)}"
        )
    return names[0]


def _require_kernels() -> None:
    from vllm_ep_kit.harness.skips import skip_or_fail

    missing = kernels_missing()
    if missing:
        skip_or_fail(f"vLLM's MoE expert kernels cannot run here: {missing}")


def rank_expert_partials(
    ctx: RankContext, cases: list[RoutingCase], ep_sizes: tuple[int, ...]
) -> list[CaseResult]:
    """Each EP rank's ``fused_experts`` partial (simulated on this one GPU) vs the reference.

    Per case, EP size and EP rank r (``detail``: ``check``, ``ep_size``, ``ep_rank``):
    ``"partial"``, vLLM's partial against the fp32 partial of rank r's experts;
    ``"control"``, the same partial against another rank's reference (with one
    rank, other weights'), which must not match where the two references differ;
    and per case and EP size ``"sum"``, the sum over ranks against the full MoE.
    """
    _require_kernels()
    results = []
    for case, ep_size in itertools.product(cases, ep_sizes):
        start = time.perf_counter()
        experts = MlpExperts(case.num_experts, case.hidden)
        tokens = source_tokens(case, 0)
        on_gpu = tokens.to(ctx.device)
        compute = torch.float32 if case.dtype == "fp32" else torch.bfloat16
        key = tolerance_key("vllm", case.dtype)
        total = torch.zeros(case.tokens[0], case.hidden)
        for rank in range(ep_size):
            got = fused_experts_partial(on_gpu, experts, ep_size, rank, dtype=compute).cpu()
            want = mlp_moe_partial(tokens, experts, ep_size, rank)
            if ep_size > 1:
                other = mlp_moe_partial(tokens, experts, ep_size, (rank + 1) % ep_size)
            else:
                other = mlp_moe_partial(
                    tokens, MlpExperts(case.num_experts, case.hidden, seed=experts.seed + 1)
                )
            where = f"ep={ep_size} rank {rank}"
            for check, reference in (("partial", want), ("control", other)):
                results.append(
                    compared(
                        "vllm fused_experts",
                        where,
                        case,
                        got,
                        reference,
                        LAYER[key],
                        start,
                        check=check,
                        ep_size=ep_size,
                        ep_rank=rank,
                        tolerance_key=key,
                    )
                )
            total += got
        results.append(
            compared(
                "vllm fused_experts",
                f"ep={ep_size} sum",
                case,
                total,
                mlp_moe_reference(tokens, experts),
                LAYER[key],
                start,
                check="sum",
                ep_size=ep_size,
                tolerance_key=key,
            )
        )
        ctx.heartbeat()
    return results


def layer_case_inputs(case: RoutingCase, source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, fp32 router logits) of one source: same on every rank that asks."""
    n = case.tokens[source]
    gen = torch.Generator().manual_seed(case.seed * 1000003 + source)
    x = torch.randn(n, case.hidden, generator=gen).to(case.torch_dtype)
    logits = torch.randn(n, case.num_experts, generator=gen)
    return x, logits


def rank_fused_moe_layer(ctx: RankContext, cases: list[RoutingCase]) -> list[CaseResult]:
    """vLLM's MoE layer on this rank, one forward per case, vs the fp32 MoE reference.

    The reference routes with softmax top-k (renormalised) in fp32 from the same
    logits and runs the same SiLU-MLP weights on one process.  One layer per
    process: vLLM's forward context finds MoE layers by construction order.
    """
    from vllm.forward_context import set_forward_context

    _require_kernels()
    layout = ctx.layout
    assert layout is not None and ctx.vllm_config is not None, (
        "vLLM's MoE layer runs inside vLLM's parallel state"
    )
    if layout.world_size != 1:
        raise ValueError(f"rank_fused_moe_layer runs one rank; layout is {layout.describe()}")
    dtypes = {case.dtype for case in cases}
    experts_of = {(c.num_experts, c.hidden) for c in cases}
    if len(dtypes) != 1 or len(experts_of) != 1 or len({c.top_k for c in cases}) != 1:
        raise ValueError("all cases of one layer share dtype, experts, hidden and top_k")
    case0 = cases[0]
    experts = MlpExperts(case0.num_experts, case0.hidden)
    layer = build_fused_moe_layer(
        ctx.vllm_config, experts, case0.top_k, case0.torch_dtype, ctx.device
    )
    results = []
    for case in cases:
        start = time.perf_counter()
        x, logits = layer_case_inputs(case, 0)
        with set_forward_context(None, ctx.vllm_config, num_tokens=x.shape[0]):
            out = layer(x.to(ctx.device), logits.to(ctx.device)).float().cpu()
        weights, ids = softmax_topk(logits, case.top_k)
        want = mlp_moe_reference(Tokens(x=x, topk_ids=ids, topk_weights=weights), experts)
        key = tolerance_key("vllm", case.dtype)
        results.append(
            compared(
                "vllm FusedMoE",
                layout.describe(),
                case,
                out,
                want,
                LAYER[key],
                start,
                kernels=layer_kernels(layer),
                tolerance_key=key,
            )
        )
        ctx.heartbeat()
    return results
