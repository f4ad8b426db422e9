"""One backend's sweep inside a rank, every point beside the baseline.

Runs where the harness has built vLLM's parallel state (DP layout, EP group
= every rank).  The FlashInfer managers are set up once per sweep, sized for
its largest point, as vLLM sizes them for the model's largest batch.  Each
point's per-rank row is appended to ``partial_dir`` as soon as it is measured,
so a sweep that dies later keeps its earlier points, and the caller can show
progress while the ranks run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vllm_ep_kit.bench import drivers
from vllm_ep_kit.bench.plan import BASELINE, BenchRun, BenchSettings
from vllm_ep_kit.bench.timing import peer_copy_gbps, time_stages
from vllm_ep_kit.bench.traffic import rank_inputs


def partial_file(partial_dir: str | Path, backend: str, rank: int) -> Path:
    return Path(partial_dir, f"{backend}.rank{rank}.jsonl")


def _manager(run: BenchRun, settings: BenchSettings):
    """vLLM's FlashInfer manager for the run, its workspace made for the largest point."""
    from vllm_ep_kit.manager_roundtrip import vllm_manager
    from vllm_ep_kit.mnnvl_managers import WorkspaceShape, ensure_workspace, kind_of_backend

    kind = kind_of_backend(run.backend)
    manager, _ = vllm_manager(kind)
    hidden = max(p.hidden for p in run.points)
    shape = WorkspaceShape(max_num_tokens=max(p.tokens for p in run.points),
                           top_k=settings.top_k, num_experts=settings.num_experts,
                           hidden_size=hidden, x_bytes_per_token=hidden * 2,  # bf16 >= fp8 + scales
                           x_sf_bytes_per_token=0)
    if not ensure_workspace(manager, kind, shape):
        raise RuntimeError(f"{run.backend}: vLLM's manager did not initialise its workspace")
    return manager


def _prepare(ctx, run: BenchRun, manager, inputs, point, settings, rank):
    if run.backend == "allgather_reducescatter":
        return drivers.agrs(ctx, inputs, point, settings)
    if run.backend == "flashinfer_nvlink_one_sided":
        return drivers.one_sided(manager, inputs, point, settings, rank, ctx.device)
    return drivers.two_sided(manager, inputs, point, settings, rank, ctx.device)


def rank_bench(ctx, run: BenchRun, settings: BenchSettings, partial_dir: str) -> dict:
    """{"rank", "link", "rows"}: this rank's medians for every point of the sweep."""
    from vllm.distributed import parallel_state as ps

    ep = ps.get_ep_group()
    rank, world = ep.rank_in_group, ep.world_size
    cuda = ctx.backend == "nccl"
    cpu_group = ep.cpu_group
    link = peer_copy_gbps(settings.link_mib, settings.repeats, cpu_group) if cuda \
        else {"gbps": None, "why": "CPU ranks (gloo): no GPU link to measure"}
    ctx.heartbeat()
    manager = None if run.backend == "allgather_reducescatter" else _manager(run, settings)
    sink = partial_file(partial_dir, run.backend, rank)
    sink.parent.mkdir(parents=True, exist_ok=True)  # after the ranks met: see sweep.run_bench
    rows = []
    for point in run.points:
        inputs = rank_inputs(point, settings, rank, world)
        prepared = _prepare(ctx, run, manager, inputs, point, settings, rank)
        base = drivers.baseline(inputs, point, settings, rank, ctx.device, group=None)
        with prepared.context:
            error = prepared.check()
            times = time_stages(prepared.stages, settings.warmup, settings.repeats, cuda,
                                cpu_group)
        base_times = time_stages(base.stages, settings.warmup, settings.repeats, cuda, cpu_group)
        row = {"backend": run.backend, "tokens": point.tokens, "hidden": point.hidden,
               "dtype": point.dtype, "rank": rank, "dispatch_ms": times["dispatch"],
               "combine_ms": times["combine"], "total_ms": times["total"],
               "remote_bytes": prepared.remote_bytes, "check_error": error,
               "baseline": BASELINE, "baseline_ms": base_times["total"],
               "baseline_remote_bytes": base.remote_bytes}
        rows.append(row)
        with sink.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        del prepared, base
        ctx.heartbeat()
    if manager is not None:
        manager.cleanup()
    if cuda:
        torch.cuda.synchronize()
    return {"rank": rank, "link": link, "rows": rows}
