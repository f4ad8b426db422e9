"""vLLM's FlashInfer NVLink managers on GPUs: lifecycle with device memory, and round trips.

Runs inside a rank where the harness has built vLLM's parallel state over
NCCL.  The manager is the one vLLM's EP-group ``CudaCommunicator`` created for
the configured ``all2all_backend`` when there is one, otherwise the same class
built on the EP group's CPU group (as vLLM does).  Its workspaces are real
FlashInfer MNNVL allocations; dispatch and combine go through FlashInfer's
kernels on those workspaces (vLLM's prepare/finalize call pattern) and are
compared with the oracle.  Device memory is read with ``cudaMemGetInfo``:
MNNVL workspaces come from the driver (cuMemCreate), not torch's caching
allocator, so only device-level free memory sees them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time

import torch

from vllm_ep_kit.ep_check import CaseResult
from vllm_ep_kit.flashinfer_direct import one_sided_case, two_sided_case
from vllm_ep_kit.mnnvl_managers import (
    BACKEND_FOR_KIND,
    MANAGER_CLASSES,
    WorkspaceShape,
    build_manager,
    check_kind,
    ensure_workspace,
    mnnvl_on_dp_group,
)
from vllm_ep_kit.reference.moe import RoutingCase

MIB = 1 << 20
# vLLM's one-sided manager sizes FlashInfer's combine region as hidden * 2 bytes: its
# combine payload is bf16 (fp8 inputs are combined in bf16 too).  Measured: an fp32
# payload fails FlashInfer's "workspace insufficient for combine payload region" check.
MANAGER_COMBINE_DTYPES = (torch.bfloat16,)


def free_device_bytes() -> int:
    """Free memory of the current device after pending work and garbage are gone."""
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def vllm_manager(kind: str):
    """(manager, origin): vLLM's own EP-group manager when it made one of ``kind``."""
    from vllm.distributed import parallel_state as ps

    comm = getattr(ps.get_ep_group(), "device_communicator", None)
    manager = getattr(comm, "all2all_manager", None)
    if type(manager).__name__ == MANAGER_CLASSES[check_kind(kind)]:
        return manager, "created by vLLM's EP-group CudaCommunicator"
    return build_manager(kind), "built on the EP group's CPU group"


def workspace_rows(manager, kind: str) -> int | None:
    """Rows (one per rank of the MNNVL communicator) of the manager's workspace."""
    if not manager.initialized:
        return None
    if kind == "two_sided":
        return int(manager.workspace_tensor.shape[0])
    return int(manager.moe_alltoall.workspace.shape[0])


def workspace_address(manager, kind: str) -> int | None:
    if not manager.initialized:
        return None
    tensor = manager.workspace_tensor if kind == "two_sided" else manager.moe_alltoall.workspace
    return int(tensor.data_ptr())


def rank_manager_lifecycle(ctx, kind: str, reverted_fix: bool = False) -> dict:
    """ensure x3, cleanup, ensure, cleanup (+ a larger one-sided re-initialise), measured.

    Each step records free device memory (MiB below the level before the
    first ensure), the workspace's rows and address.  ``reverted_fix`` runs
    the first ensure under the pre-fix DP-group communicator (negative control).
    """
    from vllm.distributed import parallel_state as ps

    ep = ps.get_ep_group()
    mutant = mnnvl_on_dp_group() if reverted_fix else contextlib.nullcontext()
    manager, origin = vllm_manager(kind)
    baseline = free_device_bytes()
    steps = []

    def record(step: str) -> None:
        steps.append({"step": step, "used_mib": round((baseline - free_device_bytes()) / MIB, 1),
                      "rows": workspace_rows(manager, kind),
                      "address": workspace_address(manager, kind),
                      "initialized": bool(manager.initialized)})
        ctx.heartbeat()

    shape = WorkspaceShape()
    plan = [("ensure", shape)] * 3 + [("cleanup", None), ("ensure", shape), ("cleanup", None)]
    if kind == "one_sided" and not reverted_fix:
        bigger = dataclasses.replace(shape, max_num_tokens=shape.max_num_tokens * 64)
        plan += [("ensure", shape), ("ensure", bigger), ("cleanup", None)]
    if reverted_fix:
        plan = [("ensure", shape), ("cleanup", None)]
    with mutant:
        for index, (step, step_shape) in enumerate(plan):
            if step == "ensure":
                try:
                    ensure_workspace(manager, kind, step_shape)
                except RuntimeError as exc:  # e.g. FlashInfer's own workspace-size check
                    steps.append({"step": f"{index + 1}. ensure", "error": str(exc)})
                    break
                label = "ensure" if step_shape is shape else \
                    f"ensure max_num_tokens={step_shape.max_num_tokens}"
            else:
                manager.cleanup()
                label = "cleanup"
            record(f"{index + 1}. {label}")
    return {"kind": kind, "origin": origin, "ep_size": ep.world_size,
            "dp_size": ps.get_dp_group().world_size, "baseline_free_mib": baseline // MIB,
            "steps": steps}


def lifecycle_findings(result: dict, tolerance_mib: float = 8.0) -> list[str]:
    """What is wrong with one rank's lifecycle record (empty: all good).

    - every ensure succeeds and its workspace has one row per EP rank;
    - repeated ensures neither allocate nor move the workspace;
    - a re-initialisation after cleanup uses what the first ensure used
      (no growth across cleanup / re-initialise cycles).
    Whether cleanup gives the memory back is :func:`release_findings`.
    """
    findings = []
    steps = result["steps"]
    for step in steps:
        if "error" in step:
            findings.append(f"{step['step']} failed: {step['error']}")
        elif step["initialized"] and step["rows"] != result["ep_size"]:
            findings.append(f"{step['step']}: workspace has {step['rows']} rows, "
                            f"EP group has {result['ep_size']} ranks")
    steps = [s for s in steps if "error" not in s]
    if not steps:
        return findings
    first = steps[0]
    for step in steps[1:3]:
        if step["step"].endswith("ensure") and (step["address"] != first["address"] or abs(
                step["used_mib"] - first["used_mib"]) > tolerance_mib):
            findings.append(f"{step['step']}: repeated ensure re-allocated ({first['used_mib']}"
                            f" -> {step['used_mib']} MiB, address changed: "
                            f"{step['address'] != first['address']})")
    for step in [s for s in steps[3:] if s["step"].endswith(". ensure")]:
        if abs(step["used_mib"] - first["used_mib"]) > tolerance_mib:
            findings.append(f"{step['step']}: re-initialised workspace uses {step['used_mib']} "
                            f"MiB, the first used {first['used_mib']} MiB")
    return findings


def release_findings(result: dict, tolerance_mib: float = 1.0) -> list[str]:
    """Device memory still held after the final cleanup (empty: back to the level before)."""
    last = result["steps"][-1]
    if last.get("initialized", True) or abs(last["used_mib"]) <= tolerance_mib:
        return []
    return [f"{last['step']}: {last['used_mib']} MiB still in use after cleanup "
            f"(tolerance {tolerance_mib} MiB)"]


def _one_sided_shape(case: RoutingCase) -> WorkspaceShape:
    elem = torch.tensor([], dtype=case.torch_dtype).element_size()
    return WorkspaceShape(max_num_tokens=max(max(case.tokens), 1), top_k=case.top_k,
                          num_experts=case.num_experts, hidden_size=case.hidden,
                          x_bytes_per_token=case.hidden * elem,
                          x_sf_bytes_per_token=case.scale_bytes_per_token)


def manager_combine(manager, case: RoutingCase, device: torch.device):
    """A one-sided ``combine(payload, max_tokens, rows)`` through vLLM's ``combine_into``."""
    def combine(payload, max_tokens, rows):
        out = torch.empty(rows, case.hidden, dtype=case.combine_dtype, device=device)
        manager.combine_into(payload, max_tokens, out)
        return out

    return combine


def prepare_one_sided(manager, case: RoutingCase) -> None:
    """(Re)initialise vLLM's one-sided manager for ``case`` through its ``initialize``."""
    if case.combine_dtype not in MANAGER_COMBINE_DTYPES:
        raise ValueError(f"case {case.describe()}: vLLM's one-sided manager combines "
                         f"{MANAGER_COMBINE_DTYPES} payloads only")
    ensure_workspace(manager, "one_sided", _one_sided_shape(case))


def rank_manager_roundtrip(ctx, kind: str, cases: list[RoutingCase],
                           ignore_ownership: bool = False, mlp_experts: bool = False
                           ) -> list[CaseResult]:
    """Every case through the manager's own workspace and FlashInfer's kernels.

    One-sided: the manager is (re)initialised per case through vLLM's
    ``initialize`` (it grows its workspace as vLLM does for heterogeneous
    layers) and combine goes through vLLM's ``combine_into``.  Two-sided: the
    manager's ``ensure_alltoall_workspace_initialized`` builds the workspaces
    that FlashInfer's prepare / alltoallv / combine then use.  ``ignore_ownership``
    is the negative control (tokens counted once per destination rank).
    ``mlp_experts``: SiLU-MLP experts vs the fp32 MLP MoE (the MoE layer
    matrix) instead of the oracle's scalar experts.
    """
    from vllm.distributed import parallel_state as ps

    from vllm_ep_kit.reference.mlp_moe import MlpExperts

    ep = ps.get_ep_group()
    rank, world = ep.rank_in_group, ep.world_size
    device = torch.device("cuda", torch.cuda.current_device())
    manager, _ = vllm_manager(kind)
    results = []
    for case in cases:
        if len(case.tokens) != world:
            raise ValueError(f"case {case.describe()}: {len(case.tokens)} sources, "
                             f"EP group has {world} ranks")
        start = time.perf_counter()
        experts = MlpExperts(case.num_experts, case.hidden) if mlp_experts else None
        if kind == "one_sided":
            prepare_one_sided(manager, case)
            row = one_sided_case(manager.moe_alltoall, case, rank, world, device,
                                 ignore_ownership, combine=manager_combine(manager, case, device),
                                 experts=experts)
        else:
            if not ensure_workspace(manager, kind):
                raise RuntimeError("two-sided manager did not initialise its workspace")
            row = two_sided_case(manager.workspace_tensor, manager.prepare_workspace_tensor,
                                 case, rank, world, device, ignore_ownership, experts)
        results.append(CaseResult(
            backend=BACKEND_FOR_KIND[kind], layout=ctx.layout.describe(), dtype=case.dtype,
            tokens=str(list(case.tokens)), dispatch_exact=None, max_error=row["max_error"],
            passed=row["passed"], seconds=time.perf_counter() - start,
            note="dispatch checked through the combined output"))
        ep.barrier()
        ctx.heartbeat()
    manager.cleanup()
    return results
