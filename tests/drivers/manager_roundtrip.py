"""vLLM's FlashInfer NVLink managers on GPUs: lifecycle with device memory, and round trips.

Runs inside a rank where the harness has built vLLM's parallel state over
NCCL.  The manager is vLLM's own EP-group one where it made one
(``backends.mnnvl.vllm_manager``).  Its workspaces are real FlashInfer MNNVL
allocations.  Device memory is read with ``cudaMemGetInfo``: MNNVL workspaces
come from the driver (cuMemCreate), not torch's caching allocator, so only
device-level free memory sees them.  The round trips are the backends'
transports through ``exchange.rank_cases``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc

import torch

from tests.drivers.mnnvl_managers import WorkspaceShape, ensure_workspace, mnnvl_on_dp_group
from vllm_ep_kit.backends import mnnvl
from vllm_ep_kit.backends.mnnvl import manager_transport
from vllm_ep_kit.reference.moe import RoutingCase
from vllm_ep_kit.reference.results import CaseResult

MIB = 1 << 20


def free_device_bytes() -> int:
    """Free memory of the current device after pending work and garbage are gone."""
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def vllm_manager(backend: str):
    """(manager, origin): vLLM's own EP-group manager when it made ``backend``'s."""
    return mnnvl.vllm_manager(manager_transport(backend).MANAGER_CLASS)


def workspace_rows(manager, backend: str) -> int | None:
    """Rows (one per rank of the MNNVL communicator) of the manager's workspace."""
    tensor = manager_transport(backend).workspace(manager)
    return None if tensor is None else int(tensor.shape[0])


def workspace_address(manager, backend: str) -> int | None:
    tensor = manager_transport(backend).workspace(manager)
    return None if tensor is None else int(tensor.data_ptr())


def rank_manager_lifecycle(ctx, backend: str, reverted_fix: bool = False) -> dict:
    """ensure x3, cleanup, ensure, cleanup (+ a larger one-sided re-initialise), measured.

    Each step records free device memory (MiB below the level before the
    first ensure), the workspace's rows and address.  ``reverted_fix`` runs
    the first ensure under the pre-fix DP-group communicator (negative control).
    """
    from vllm.distributed import parallel_state as ps

    ep = ps.get_ep_group()
    mutant = mnnvl_on_dp_group() if reverted_fix else contextlib.nullcontext()
    manager, origin = vllm_manager(backend)
    baseline = free_device_bytes()
    steps = []

    def record(step: str) -> None:
        steps.append(
            {
                "step": step,
                "used_mib": round((baseline - free_device_bytes()) / MIB, 1),
                "rows": workspace_rows(manager, backend),
                "address": workspace_address(manager, backend),
                "initialized": bool(manager.initialized),
            }
        )
        ctx.heartbeat()

    shape = WorkspaceShape()
    plan = [("ensure", shape)] * 3 + [("cleanup", None), ("ensure", shape), ("cleanup", None)]
    if manager_transport(backend).GROWS_ON_INITIALIZE and not reverted_fix:
        bigger = dataclasses.replace(shape, max_num_tokens=shape.max_num_tokens * 64)
        plan += [("ensure", shape), ("ensure", bigger), ("cleanup", None)]
    if reverted_fix:
        plan = [("ensure", shape), ("cleanup", None)]
    with mutant:
        for index, (step, step_shape) in enumerate(plan):
            if step == "ensure":
                assert step_shape is not None, "each ensure step has its shape"
                try:
                    ensure_workspace(manager, backend, step_shape)
                except RuntimeError as exc:  # e.g. FlashInfer's own workspace-size check
                    steps.append({"step": f"{index + 1}. ensure", "error": str(exc)})
                    break
                label = (
                    "ensure"
                    if step_shape is shape
                    else f"ensure max_num_tokens={step_shape.max_num_tokens}"
                )
            else:
                manager.cleanup()
                label = "cleanup"
            record(f"{index + 1}. {label}")
    return {
        "backend": backend,
        "origin": origin,
        "ep_size": ep.world_size,
        "dp_size": ps.get_dp_group().world_size,
        "baseline_free_mib": baseline // MIB,
        "steps": steps,
    }


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
            findings.append(
                f"{step['step']}: workspace has {step['rows']} rows, "
                f"EP group has {result['ep_size']} ranks"
            )
    steps = [s for s in steps if "error" not in s]
    if not steps:
        return findings
    first = steps[0]
    for step in steps[1:3]:
        if step["step"].endswith("ensure") and (
            step["address"] != first["address"]
            or abs(step["used_mib"] - first["used_mib"]) > tolerance_mib
        ):
            findings.append(
                f"{step['step']}: repeated ensure re-allocated ({first['used_mib']}"
                f" -> {step['used_mib']} MiB, address changed: "
                f"{step['address'] != first['address']})"
            )
    for step in [s for s in steps[3:] if s["step"].endswith(". ensure")]:
        if abs(step["used_mib"] - first["used_mib"]) > tolerance_mib:
            findings.append(
                f"{step['step']}: re-initialised workspace uses {step['used_mib']} "
                f"MiB, the first used {first['used_mib']} MiB"
            )
    return findings


def release_findings(result: dict, tolerance_mib: float = 1.0) -> list[str]:
    """Device memory still held after the final cleanup (empty: back to the level before)."""
    last = result["steps"][-1]
    if last.get("initialized", True) or abs(last["used_mib"]) <= tolerance_mib:
        return []
    return [
        f"{last['step']}: {last['used_mib']} MiB still in use after cleanup "
        f"(tolerance {tolerance_mib} MiB)"
    ]


def rank_manager_roundtrip(
    ctx, backend: str, cases: list[RoutingCase], ignore_ownership: bool = False
) -> list[CaseResult]:
    """Every case through the manager's own workspace and FlashInfer's kernels (the
    backend's transport); ``ignore_ownership`` is the negative control (tokens
    counted once per destination rank)."""
    from vllm_ep_kit import backends
    from vllm_ep_kit.backends.exchange import rank_cases

    manager_transport(backend)  # a manager-driven backend, or a one-line ValueError
    return rank_cases(ctx, backends.get(backend), cases, ignore_ownership)
