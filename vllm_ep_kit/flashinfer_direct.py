"""FlashInfer's one-sided NVLink all-to-all driven directly, checked against the oracle.

Bootstrap over the harness's gloo world group (as vLLM's managers do over the
EP group's CPU group); payloads are hidden states, top-k ids and top-k
weights; each destination rank computes its own experts' partial output
for the slots it received and ``combine`` sums them back per source token.
The expected result is ``moe_reference`` of the source's own tokens.

Ranks may share a GPU (``device_index = rank % device_count``): then the
NVLink path degenerates to one device, which still exercises FlashInfer's
handle exchange, workspace layout, routing and combine.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from vllm_ep_kit.reference.moe import (
    RoutingCase,
    Tokens,
    dequantize_fp8,
    expert_owner,
    expert_scales,
    max_error,
    moe_reference,
    source_tokens,
    within_tolerance,
)


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


def _comm_backend(group):
    """FlashInfer's CommBackend over a torch.distributed (gloo) group."""
    from flashinfer.comm.mnnvl import CommBackend

    class GlooCommBackend(CommBackend):
        def Get_rank(self) -> int:
            return dist.get_rank(group)

        def Get_size(self) -> int:
            return dist.get_world_size(group)

        def allgather(self, data):
            out = [None] * self.Get_size()
            dist.all_gather_object(out, data, group=group)
            return out

        def bcast(self, data, root: int):
            box = [data]
            dist.broadcast_object_list(box, src=root, group=group)
            return box[0]

        def barrier(self) -> None:
            dist.barrier(group=group)

        def Split(self, color: int, key: int):
            return self

    return GlooCommBackend()


def _local_inputs(case: RoutingCase, rank: int, device: torch.device):
    """This source's tokens, and their payload on ``device`` (see :func:`_payload`)."""
    mine = source_tokens(case, rank)
    return (mine, *_payload(mine, device))


def _payload(mine: Tokens, device: torch.device):
    """(payload tensors, ids, weights) on ``device``; fp8 hidden states travel as bytes + scales."""
    x, scale, ids, w = mine.wire(device)
    return [x, *([scale] if scale is not None else [])], ids, w


def _expert_partial(case: RoutingCase, recv_x: torch.Tensor, recv_scale, recv_ids: torch.Tensor,
                    recv_w: torch.Tensor, rank: int, world: int,
                    ignore_ownership: bool = False, experts=None) -> torch.Tensor:
    """This rank's experts' output for every received row (unowned/invalid ids add 0).

    ``ignore_ownership`` is the negative control: every slot is applied, so
    tokens are counted on every rank they reach (and markers as experts).
    ``experts`` (an ``MlpExperts``): real SiLU-MLP experts instead of the
    oracle's scalar ones, computed in bf16 (fp32 for fp32 cases) as a layer would.
    """
    if experts is not None:
        return _mlp_partial(case, recv_x, recv_scale, recv_ids, recv_w, rank, world, experts)
    device = recv_x.device
    owner = expert_owner(case.num_experts, world).to(device)
    scales = expert_scales(case.num_experts).to(device)
    ids = recv_ids.long()
    if ignore_ownership:  # negative control: every slot counts, whatever id or marker it holds
        safe = ids.remainder(case.num_experts)
        mask = torch.ones_like(safe, dtype=torch.float)
    else:
        valid = (ids >= 0) & (ids < case.num_experts)  # unsent slots hold junk or a marker
        safe = ids.clamp(0, case.num_experts - 1)
        mask = (valid & (owner[safe] == rank)).float()
    coeff = (recv_w.float() * scales[safe] * mask).sum(-1)
    values = dequantize_fp8(recv_x.view(torch.float8_e4m3fn), recv_scale) \
        if case.dtype == "fp8" else recv_x.float()
    return (values * coeff.unsqueeze(-1)).to(case.combine_dtype)


def _mlp_partial(case: RoutingCase, recv_x, recv_scale, recv_ids, recv_w, rank: int, world: int,
                 experts) -> torch.Tensor:
    """The MLP experts of this rank over the received rows (any leading shape).

    vLLM's ``fused_experts`` where its kernels load, else the torch reference.
    """
    from vllm_ep_kit.vllm_experts import default_impl, expert_partial

    lead = recv_x.shape[:-1]
    x = recv_x.reshape(-1, recv_x.shape[-1])
    if case.dtype == "fp8":
        scale = recv_scale.reshape(-1, recv_scale.shape[-1])
        values = dequantize_fp8(x.view(torch.float8_e4m3fn), scale)
    else:
        values = x
    received = Tokens(x=values, topk_ids=recv_ids.reshape(-1, case.top_k),
                      topk_weights=recv_w.reshape(-1, case.top_k))
    compute = torch.float32 if case.dtype == "fp32" else torch.bfloat16
    partial = expert_partial(default_impl(values.device), received, experts, world, rank,
                             dtype=compute)
    return partial.reshape(*lead, -1).to(case.combine_dtype)


def _result(case: RoutingCase, mine, out: torch.Tensor, start: float, experts=None,
            **extra) -> dict:
    """Compare with the oracle, or with the fp32 MLP MoE when ``experts`` are given."""
    from vllm_ep_kit.reference.mlp_moe import layer_close, mlp_moe_reference
    from vllm_ep_kit.vllm_experts import default_impl, tolerance_key

    torch.cuda.synchronize()
    got = out[: mine.x.shape[0]].float().cpu()
    if experts is None:
        want = moe_reference(mine, case.num_experts)
        passed = within_tolerance(got, want, case.dtype)
    else:
        want = mlp_moe_reference(mine, experts)
        passed = layer_close(got, want, tolerance_key(default_impl(out.device), case.dtype))
    return {"case": case.describe(), "dtype": case.dtype, "tokens": list(case.tokens),
            "max_error": max_error(got, want), "passed": passed,
            "seconds": time.perf_counter() - start, **extra}


def one_sided_case(a2a, case: RoutingCase, rank: int, world: int, device: torch.device,
                   ignore_ownership: bool = False, combine=None, experts=None) -> dict:
    """One dispatch + expert partials + combine of this source's tokens through a ``MoeAlltoAll``.

    ``combine(payload, max_tokens, rows)`` overrides ``a2a.combine`` (vLLM's
    manager has its own ``combine_into``).  ``ignore_ownership``, ``experts``:
    see ``_expert_partial``.
    """
    start = time.perf_counter()
    mine = source_tokens(case, rank)
    out = one_sided_round_trip(a2a, mine, case, rank, world, device, ignore_ownership,
                               combine, experts)
    return _result(case, mine, out, start, experts)


def one_sided_round_trip(a2a, mine: Tokens, case: RoutingCase, rank: int, world: int,
                         device: torch.device, ignore_ownership: bool = False, combine=None,
                         experts=None) -> torch.Tensor:
    """Dispatch ``mine`` (any rows up to ``max(case.tokens)``), expert partials, combine.

    Returns this rank's combined rows.  Every rank of the all-to-all calls it
    together with the same ``case`` (it sets the per-rank token bound).
    """
    max_tokens = max(max(case.tokens), 1)
    if mine.x.shape[0] > max_tokens:
        raise ValueError(f"{mine.x.shape[0]} tokens on rank {rank}: more than the bound "
                         f"max(case.tokens)={max_tokens} every rank dispatches with")
    payload, ids, w = _payload(mine, device)
    received = a2a.dispatch(ids, [*payload, ids, w], max_tokens)
    recv_x, recv_scale = received[0], (received[1] if case.dtype == "fp8" else None)
    recv_ids, recv_w = received[-2], received[-1]
    partial = _expert_partial(case, recv_x, recv_scale, recv_ids, recv_w, rank, world,
                              ignore_ownership, experts)
    if combine is not None:
        return combine(partial, max_tokens, mine.x.shape[0])
    return a2a.combine(partial, max_tokens)


def two_sided_case(workspace, prepare_workspace, case: RoutingCase, rank: int, world: int,
                   device: torch.device, ignore_ownership: bool = False, experts=None) -> dict:
    """One prepare + dispatch + expert partials + combine through ``MnnvlMoe`` (alltoallv).

    ``prepare`` routes top-k ids and weights to the ranks owning the experts
    and returns them aligned with the rows ``alltoallv`` delivers; fp8 scales
    travel in a second ``alltoallv`` with the same routing info, as vLLM's
    two-sided dispatch sends ``x_sf``.
    """
    from flashinfer.comm.trtllm_alltoall import MnnvlMoe

    start = time.perf_counter()
    max_tokens = max(max(case.tokens), 1)
    mine, payload, ids, w = _local_inputs(case, rank, device)
    info, recv_ids, recv_w, _ = MnnvlMoe.mnnvl_moe_alltoallv_prepare_without_allgather(
        ids, w, None, prepare_workspace, max_tokens, rank, world, case.num_experts,
        case.num_experts, case.top_k)
    recv_x = MnnvlMoe.mnnvl_moe_alltoallv(payload[0], info, workspace, rank, world)
    recv_scale = MnnvlMoe.mnnvl_moe_alltoallv(payload[1], info, workspace, rank, world) \
        if case.dtype == "fp8" else None
    rows = recv_x.shape[0]
    partial = _expert_partial(case, recv_x, recv_scale, recv_ids[:rows],
                              recv_w[:rows].view(torch.float32), rank, world, ignore_ownership,
                              experts)
    out = MnnvlMoe.mnnvl_moe_alltoallv_combine(partial, info, workspace, ep_rank=rank,
                                               ep_size=world, top_k=case.top_k,
                                               token_count=mine.x.shape[0])
    return _result(case, mine, out, start, experts, received_rows=rows)


def _bind_device(rank: int) -> torch.device:
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def one_sided_workspace_size(case: RoutingCase, world: int) -> int:
    from flashinfer.comm.trtllm_moe_alltoall import moe_a2a_get_workspace_size_per_rank

    x_bytes = case.hidden * torch.tensor([], dtype=case.torch_dtype).element_size()
    combine_bytes = case.hidden * torch.tensor([], dtype=case.combine_dtype).element_size()
    return moe_a2a_get_workspace_size_per_rank(
        ep_size=world, max_num_tokens=max(max(case.tokens), 1),
        total_dispatch_payload_size_per_token=x_bytes + case.scale_bytes_per_token
        + case.top_k * 8,
        combine_payload_size_per_token=combine_bytes)


def rank_one_sided_roundtrip(ctx, cases: list[RoutingCase],
                             ignore_ownership: bool = False) -> list[dict]:
    """Every case through a ``MoeAlltoAll`` built here on the world group (no vLLM)."""
    from flashinfer.comm import Mapping
    from flashinfer.comm.mnnvl import MnnvlConfig
    from flashinfer.comm.trtllm_moe_alltoall import MoeAlltoAll

    world, rank = ctx.world_size, ctx.rank
    device = _bind_device(rank)
    results = []
    for case in cases:
        mapping = Mapping(world, rank, torch.cuda.device_count(), tp_size=world,
                          moe_ep_size=world)
        a2a = MoeAlltoAll(mapping=mapping, max_num_tokens=max(max(case.tokens), 1),
                          top_k=case.top_k, num_experts=case.num_experts,
                          workspace_size_per_rank=one_sided_workspace_size(case, world),
                          mnnvl_config=MnnvlConfig(comm_backend=_comm_backend(dist.group.WORLD)))
        results.append(one_sided_case(a2a, case, rank, world, device, ignore_ownership))
        del a2a
        dist.barrier()
        ctx.heartbeat()
    return results


def rank_two_sided_roundtrip(ctx, cases: list[RoutingCase],
                             ignore_ownership: bool = False) -> list[dict]:
    """Every case through ``MnnvlMoe`` workspaces built here on the world group (no vLLM)."""
    from flashinfer.comm import Mapping
    from flashinfer.comm.mnnvl import MnnvlConfig
    from flashinfer.comm.trtllm_alltoall import MnnvlMoe

    world, rank = ctx.world_size, ctx.rank
    device = _bind_device(rank)
    mapping = Mapping(world, rank, torch.cuda.device_count(), tp_size=world)
    config = MnnvlConfig(comm_backend=_comm_backend(dist.group.WORLD),
                         fabric_page_size=1 << 29, allocation_granularity=0)
    workspace = MnnvlMoe.get_moe_workspaces(mapping, config)
    prepare_workspace = MnnvlMoe.get_moe_prepare_workspace(mapping, config)
    results = []
    for case in cases:
        results.append(two_sided_case(workspace, prepare_workspace, case, rank, world, device,
                                      ignore_ownership))
        dist.barrier()
        ctx.heartbeat()
    return results
