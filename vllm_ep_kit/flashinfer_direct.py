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
    expert_owner,
    expert_scales,
    max_error,
    moe_reference,
    source_tokens,
    within_tolerance,
)


def default_cases(world: int) -> list[RoutingCase]:
    """Even (64 x 2048 bf16, top-4 of 16), uneven, one rank empty, and an fp32 case."""
    return [RoutingCase(tokens=(64,) * world, hidden=2048, num_experts=16, top_k=4),
            RoutingCase(tokens=tuple(3 + 4 * r for r in range(world)), hidden=256),
            RoutingCase(tokens=tuple(0 if r == world - 1 else 7 for r in range(world)),
                        hidden=256),
            RoutingCase(tokens=(16,) * world, hidden=512, dtype="fp32")]


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


def rank_one_sided_roundtrip(ctx, cases: list[RoutingCase],
                             ignore_ownership: bool = False) -> list[dict]:
    """Dispatch + expert partials + combine through ``MoeAlltoAll`` for every case.

    ``ignore_ownership`` is a negative control: every rank then applies all of a
    token's experts, so tokens sent to two ranks are counted twice.
    """
    from flashinfer.comm import Mapping
    from flashinfer.comm.mnnvl import MnnvlConfig
    from flashinfer.comm.trtllm_moe_alltoall import (
        MoeAlltoAll,
        moe_a2a_get_workspace_size_per_rank,
    )

    world, rank = ctx.world_size, ctx.rank
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    group = dist.group.WORLD
    results = []
    for case in cases:
        start = time.perf_counter()
        max_tokens = max(max(case.tokens), 1)
        elem = torch.tensor([], dtype=case.torch_dtype).element_size()
        per_token = case.hidden * elem + case.top_k * 8
        size = moe_a2a_get_workspace_size_per_rank(
            ep_size=world, max_num_tokens=max_tokens,
            total_dispatch_payload_size_per_token=per_token,
            combine_payload_size_per_token=case.hidden * elem)
        mapping = Mapping(world, rank, torch.cuda.device_count(), tp_size=world,
                          moe_ep_size=world)
        a2a = MoeAlltoAll(mapping=mapping, max_num_tokens=max_tokens, top_k=case.top_k,
                          num_experts=case.num_experts, workspace_size_per_rank=size,
                          mnnvl_config=MnnvlConfig(comm_backend=_comm_backend(group)))
        mine = source_tokens(case, rank)
        x, ids, w = (mine.x.to(device), mine.topk_ids.to(device),
                     mine.topk_weights.to(device))
        recv_x, recv_ids, recv_w = a2a.dispatch(ids, [x, ids, w], max_tokens)
        # Partial output of this rank's experts for every received slot.
        owner = expert_owner(case.num_experts, world).to(device)
        scales = expert_scales(case.num_experts).to(device)
        safe = recv_ids.long().clamp(0, case.num_experts - 1)  # unsent slots hold junk
        mask = torch.ones_like(safe, dtype=torch.float) if ignore_ownership \
            else (owner[safe] == rank).float()
        coeff = (recv_w.float() * scales[safe] * mask).sum(-1)
        partial = (recv_x.float() * coeff.unsqueeze(-1)).to(case.torch_dtype)
        out = a2a.combine(partial, max_tokens)
        torch.cuda.synchronize()
        want = moe_reference(mine, case.num_experts)
        got = out[: mine.x.shape[0]].float().cpu()
        results.append({"case": case.describe(), "max_error": max_error(got, want),
                        "passed": within_tolerance(got, want, case.dtype),
                        "seconds": time.perf_counter() - start})
        del a2a
        dist.barrier()
        ctx.heartbeat()
    return results


def rank_two_sided_roundtrip(ctx, cases: list[RoutingCase]) -> list[dict]:
    """The same check through FlashInfer's two-sided ``MnnvlMoe`` (alltoallv) kernels.

    ``prepare`` routes top-k ids and weights to the ranks owning the experts
    and returns them aligned with the rows ``alltoallv`` delivers; each
    destination computes its experts' partial per received row (ids it does
    not own, or the out-of-range marker, contribute nothing) and ``combine``
    sums the rows back per source token.
    """
    from flashinfer.comm import Mapping
    from flashinfer.comm.mnnvl import MnnvlConfig
    from flashinfer.comm.trtllm_alltoall import MnnvlMoe

    world, rank = ctx.world_size, ctx.rank
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    mapping = Mapping(world, rank, torch.cuda.device_count(), tp_size=world)
    config = MnnvlConfig(comm_backend=_comm_backend(dist.group.WORLD),
                         fabric_page_size=1 << 29, allocation_granularity=0)
    workspace = MnnvlMoe.get_moe_workspaces(mapping, config)
    prepare_workspace = MnnvlMoe.get_moe_prepare_workspace(mapping, config)
    results = []
    for case in cases:
        start = time.perf_counter()
        max_tokens = max(max(case.tokens), 1)
        mine = source_tokens(case, rank)
        x, ids, w = (mine.x.to(device), mine.topk_ids.to(device),
                     mine.topk_weights.to(device))
        info, recv_ids, recv_w, _ = MnnvlMoe.mnnvl_moe_alltoallv_prepare_without_allgather(
            ids, w, None, prepare_workspace, max_tokens, rank, world, case.num_experts,
            case.num_experts, case.top_k)
        recv_x = MnnvlMoe.mnnvl_moe_alltoallv(x, info, workspace, rank, world)
        rows = recv_x.shape[0]
        recv_ids, recv_w = recv_ids[:rows].long(), recv_w[:rows].view(torch.float32)
        owner = expert_owner(case.num_experts, world).to(device)
        scales = expert_scales(case.num_experts).to(device)
        valid = (recv_ids >= 0) & (recv_ids < case.num_experts)
        safe = recv_ids.clamp(0, case.num_experts - 1)
        mask = (valid & (owner[safe] == rank)).float()
        coeff = (recv_w.float() * scales[safe] * mask).sum(-1)
        partial = (recv_x.float() * coeff.unsqueeze(-1)).to(case.torch_dtype)
        out = MnnvlMoe.mnnvl_moe_alltoallv_combine(partial, info, workspace, ep_rank=rank,
                                                   ep_size=world, top_k=case.top_k,
                                                   token_count=mine.x.shape[0])
        torch.cuda.synchronize()
        want = moe_reference(mine, case.num_experts)
        got = out[: mine.x.shape[0]].float().cpu()
        results.append({"case": case.describe(), "received_rows": rows,
                        "max_error": max_error(got, want),
                        "passed": within_tolerance(got, want, case.dtype),
                        "seconds": time.perf_counter() - start})
        dist.barrier()
        ctx.heartbeat()
    return results
