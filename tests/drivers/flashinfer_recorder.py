"""Stand-in for FlashInfer's MNNVL allocation layer that records what vLLM asks for.

vLLM's FlashInfer NVLink managers decide which process group the MNNVL
communicator spans and how the workspace is sized; FlashInfer then allocates
one workspace row per rank of that group (measured on H200: a (2, 17303616)
uint64 workspace on 2 ranks).  The EP-group bug (upstream PR 40893) lived in
the first half, which is pure Python, so on a CPU-only machine we run vLLM's
real manager code and replace only the second half with this recorder: the
kit's one FlashInfer stand-in (``patches.flashinfer_managers.FlashInferStandIn``,
which knows where each release looks FlashInfer up), whose allocations talk
through the communicator vLLM built (an ``allgather`` of global ranks, as the
real handle exchange does) so it learns the group's actual members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from vllm_ep_kit.patches.flashinfer_managers import FlashInferStandIn, one_sided_workspace_bytes

WORKSPACE_WORDS = 8  # tiny stand-in rows; the shape's first dimension is what matters


@dataclass
class Allocation:
    kind: str  # "two_sided_workspace" | "two_sided_prepare" | "one_sided"
    comm_size: int
    group_ranks: list[int]  # global ranks of the communicator's members
    mapping_world_size: int
    mapping_ep_extent: int  # one-sided: Mapping.moe_ep_size; two-sided: Mapping.tp_size
    rows: int
    details: dict[str, Any] = field(default_factory=dict)


class FlashInferAllocationRecorder(FlashInferStandIn):
    """The kit's FlashInfer stand-in, recording each allocation vLLM's managers make (a
    tiny workspace of the group's row count) and each workspace-size query."""

    def __init__(self) -> None:
        self.allocations: list[Allocation] = []
        self.size_queries: list[int] = []  # ep_size passed to the workspace-size helper

    def allocate(self, kind: str, mapping, config, **details) -> torch.Tensor:
        comm = config.comm_backend
        members = comm.allgather(dist.get_rank())
        rows = comm.Get_size()
        self.allocations.append(
            Allocation(
                kind=kind,
                comm_size=comm.Get_size(),
                group_ranks=list(members),
                mapping_world_size=int(mapping.world_size),
                mapping_ep_extent=int(
                    mapping.moe_ep_size if kind == "one_sided" else mapping.tp_size
                ),
                rows=rows,
                details=details,
            )
        )
        return torch.zeros(rows, WORKSPACE_WORDS, dtype=torch.int64)

    def workspace_size(
        self,
        ep_size,
        max_num_tokens,
        total_dispatch_payload_size_per_token,
        combine_payload_size_per_token,
        *args,
        **kwargs,
    ) -> int:
        self.size_queries.append(int(ep_size))
        return workspace_bytes(
            ep_size,
            max_num_tokens,
            total_dispatch_payload_size_per_token,
            combine_payload_size_per_token,
        )

    def communication(self, bootstrap, params, config) -> torch.Tensor:
        return self.allocate(
            "one_sided",
            _BootstrapMapping(bootstrap),
            config,
            max_num_tokens=params.max_tokens_per_rank,
            top_k=params.top_k,
            num_experts=params.num_experts,
            hidden_size=params.hidden_size,
            extra_payload_bytes_per_token=config.extra_payload_bytes_per_token,
            dispatch_bytes_per_token=(
                params.dispatch_bytes_per_token + config.extra_payload_bytes_per_token
            ),
        )


def workspace_bytes(
    ep_size, max_num_tokens, dispatch_bytes_per_token, combine_bytes_per_token
) -> int:
    """FlashInfer's per-rank workspace size for ``MoeAlltoAll``, as the stand-in answers
    vLLM's size query (the kit's restatement of FlashInfer's, which ``preflight`` reports)."""
    return one_sided_workspace_bytes(
        int(ep_size),
        int(max_num_tokens),
        int(dispatch_bytes_per_token),
        int(combine_bytes_per_token),
    )


def one_sided_shortfalls(alloc: Allocation, shape) -> list[str]:
    """What a layer of ``shape`` (a ``WorkspaceShape``) needs that one-sided workspace
    ``alloc`` lacks; empty: the layer fits.  The need is computed here from the layer, not
    read back from vLLM: bf16 combine rows of ``hidden_size``, dispatch rows of the layer's
    activations and scales (plus, for FlashInfer's ``MoeAlltoAll``, int32 ids and fp32
    weights per top-k slot, which vLLM <= 0.32 adds to the dispatch payload)."""
    have = alloc.details
    short = []
    if have["max_num_tokens"] < shape.max_num_tokens:
        short.append(f"max_num_tokens {have['max_num_tokens']} < {shape.max_num_tokens}")
    dispatch = shape.x_bytes_per_token + shape.x_sf_bytes_per_token
    if "workspace_size_per_rank" in have:  # MoeAlltoAll: one byte count per rank
        need = workspace_bytes(
            alloc.rows, shape.max_num_tokens, dispatch + shape.top_k * 8, shape.hidden_size * 2
        )
        if have["workspace_size_per_rank"] < need:
            short.append(f"workspace {have['workspace_size_per_rank']} B per rank < {need} B")
        return short
    if have["hidden_size"] < shape.hidden_size:  # moe_ep: rows of one width, payload bytes
        short.append(f"hidden_size {have['hidden_size']} < {shape.hidden_size}")
    if have["dispatch_bytes_per_token"] < dispatch:
        short.append(f"dispatch {have['dispatch_bytes_per_token']} B per token < {dispatch} B")
    return short


def growth_findings(steps: list[dict]) -> list[str]:
    """What is wrong with a one-sided workspace's growth over layers (empty: right).

    ``steps``: per layer initialised, in order, its ``label``, ``shape`` and the one-sided
    ``allocations`` made so far (a list of :class:`Allocation`).  Right means: after each
    layer the newest workspace holds every layer so far (it grows to their union and never
    shrinks), and a layer the previous workspace already holds allocates nothing.
    """
    findings = []
    for index, step in enumerate(steps):
        made = step["allocations"]
        if not made:
            findings.append(f"{step['label']}: no one-sided workspace allocated")
            continue
        newest = made[-1]
        for earlier in steps[: index + 1]:
            short = one_sided_shortfalls(newest, earlier["shape"])
            if short:
                findings.append(
                    f"after {step['label']}: the workspace no longer holds "
                    f"{earlier['label']} ({'; '.join(short)})"
                )
        before = steps[index - 1]["allocations"] if index else []
        if (
            before
            and len(made) > len(before)
            and not one_sided_shortfalls(before[-1], step["shape"])
        ):
            findings.append(f"{step['label']}: re-allocated although the workspace held it")
    return findings


class _BootstrapMapping:
    """What the findings read from a Mapping, taken from vLLM 0.33's ``BootstrapConfig``
    (the EP comm domain FlashInfer builds its Mapping from)."""

    def __init__(self, bootstrap):
        self.world_size = int(bootstrap.world_size)
        self.moe_ep_size = int(bootstrap.world_size)


def workspace_group_findings(allocations: list[Allocation], ep_ranks: list[int]) -> list[str]:
    """Problems with where the MNNVL workspaces were placed (empty list: correct).

    Every allocation must span exactly the EP group: the kernel asserts
    ``workspace.size(0) == moe_ep_size``.
    """
    if not allocations:
        return ["no MNNVL workspace was allocated"]
    findings = []
    ep_size = len(ep_ranks)
    for alloc in allocations:
        if alloc.group_ranks != ep_ranks:
            findings.append(
                f"{alloc.kind}: MNNVL communicator spans ranks {alloc.group_ranks}, "
                f"the EP group is {ep_ranks}"
            )
        if alloc.rows != ep_size:
            findings.append(
                f"{alloc.kind}: workspace has {alloc.rows} rows, the kernel "
                f"asserts one per EP rank ({ep_size})"
            )
        if alloc.mapping_ep_extent != ep_size:
            findings.append(
                f"{alloc.kind}: Mapping spans {alloc.mapping_ep_extent} ranks, EP size is {ep_size}"
            )
    return findings
