"""Stand-in for FlashInfer's MNNVL allocation layer that records what vLLM asks for.

vLLM's FlashInfer NVLink managers decide which process group the MNNVL
communicator spans and how the workspace is sized; FlashInfer then allocates
one workspace row per rank of that group (measured on H200: a (2, 17303616)
uint64 workspace on 2 ranks).  The EP-group bug (upstream PR 40893) lived in
the first half, which is pure Python, so on a CPU-only machine we run vLLM's
real manager code and replace only the second half with this recorder.  It
talks through the communicator vLLM built (an ``allgather`` of global ranks,
as the real handle exchange does) so it learns the group's actual members.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

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


class FlashInferAllocationRecorder:
    """Patches vLLM's all2all module's FlashInfer names while installed."""

    def __init__(self) -> None:
        self.allocations: list[Allocation] = []
        self.size_queries: list[int] = []  # ep_size passed to the workspace-size helper

    def _record(self, kind: str, mapping, config, **details) -> torch.Tensor:
        comm = config.comm_backend
        members = comm.allgather(dist.get_rank())
        rows = comm.Get_size()
        self.allocations.append(Allocation(
            kind=kind, comm_size=comm.Get_size(), group_ranks=list(members),
            mapping_world_size=int(mapping.world_size),
            mapping_ep_extent=int(mapping.moe_ep_size if kind == "one_sided"
                                  else mapping.tp_size),
            rows=rows, details=details))
        return torch.zeros(rows, WORKSPACE_WORDS, dtype=torch.int64)

    def _two_sided_class(self):
        recorder = self

        class RecordingMnnvlMoe:
            @staticmethod
            def get_moe_workspaces(mapping, config):
                return recorder._record("two_sided_workspace", mapping, config)

            @staticmethod
            def get_moe_prepare_workspace(mapping, config):
                return recorder._record("two_sided_prepare", mapping, config)

        return RecordingMnnvlMoe

    def _one_sided_class(self):
        recorder = self

        class RecordingMoeAlltoAll:
            def __init__(self, mapping, max_num_tokens, top_k, num_experts,
                         workspace_size_per_rank, mnnvl_config=None, **kwargs):
                self.workspace = recorder._record(
                    "one_sided", mapping, mnnvl_config, max_num_tokens=max_num_tokens,
                    top_k=top_k, num_experts=num_experts,
                    workspace_size_per_rank=workspace_size_per_rank)

            def dispatch(self, *args, **kwargs):
                raise NotImplementedError("allocation recorder: no FlashInfer kernels here")

            def combine(self, payload, runtime_max_tokens_per_rank, output=None,
                        use_low_precision=False):
                raise NotImplementedError("allocation recorder: no FlashInfer kernels here")

        return RecordingMoeAlltoAll

    def _workspace_size(self, ep_size, max_num_tokens, total_dispatch_payload_size_per_token,
                        combine_payload_size_per_token, *args, **kwargs) -> int:
        self.size_queries.append(int(ep_size))
        per_token = total_dispatch_payload_size_per_token + combine_payload_size_per_token
        return int(ep_size) * int(max_num_tokens) * int(per_token)

    @contextlib.contextmanager
    def installed(self):
        """Replace FlashInfer's allocators as seen by vLLM's all2all module."""
        from vllm.distributed.device_communicators import all2all

        replacements = {
            "MnnvlMoe": self._two_sided_class(),
            "MoeAlltoAll": self._one_sided_class(),
            "moe_a2a_get_workspace_size_per_rank": self._workspace_size,
        }
        saved = {name: getattr(all2all, name, None) for name in replacements}
        missing = [name for name, value in saved.items() if value is None]
        if missing:
            raise RuntimeError(
                f"vllm {all2all.__name__} has no {missing}: its FlashInfer integration "
                "has a shape this recorder does not know")
        for name, value in replacements.items():
            setattr(all2all, name, value)
        # On a CPU-only machine there is no device cache for the one-sided
        # manager to empty before allocating; torch raises instead of no-op.
        saved_empty_cache = torch.accelerator.empty_cache
        if not torch.accelerator.is_available():
            torch.accelerator.empty_cache = lambda: None
        try:
            yield self
        finally:
            torch.accelerator.empty_cache = saved_empty_cache
            for name, value in saved.items():
                setattr(all2all, name, value)


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
            findings.append(f"{alloc.kind}: MNNVL communicator spans ranks {alloc.group_ranks}, "
                            f"the EP group is {ep_ranks}")
        if alloc.rows != ep_size:
            findings.append(f"{alloc.kind}: workspace has {alloc.rows} rows, the kernel "
                            f"asserts one per EP rank ({ep_size})")
        if alloc.mapping_ep_extent != ep_size:
            findings.append(f"{alloc.kind}: Mapping spans {alloc.mapping_ep_extent} ranks, "
                            f"EP size is {ep_size}")
    return findings
