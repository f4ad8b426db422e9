"""One backend's sweep inside a rank, every point beside the baseline.

Runs where the harness has built vLLM's parallel state (DP layout, EP group
= every rank).  The backend's transport is prepared once for the sweep's
largest point, as vLLM sizes its buffers for the model's largest batch.  Each
point's per-rank row is appended to ``partial_dir`` as soon as it is measured,
so a sweep that dies later keeps its earlier points, and the caller can show
progress while the ranks run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vllm_ep_kit.commands.bench import drivers
from vllm_ep_kit.commands.bench.plan import BASELINE, BenchRun, BenchSettings
from vllm_ep_kit.commands.bench.timing import peer_copy_gbps, time_stages
from vllm_ep_kit.commands.bench.traffic import rank_inputs


def partial_file(partial_dir: str | Path, backend: str, rank: int) -> Path:
    return Path(partial_dir, f"{backend}.rank{rank}.jsonl")


def _largest_case(run: BenchRun, settings: BenchSettings, world: int):
    """A case whose buffers fit every point (bf16 rows are at least as wide as fp8 + scales)."""
    from vllm_ep_kit.commands.bench.plan import BenchPoint
    from vllm_ep_kit.commands.bench.traffic import point_case

    largest = BenchPoint(
        max(p.tokens for p in run.points), max(p.hidden for p in run.points), "bf16"
    )
    return point_case(largest, settings, world)


def rank_bench(ctx, run: BenchRun, settings: BenchSettings, partial_dir: str) -> dict:
    """{"rank", "link", "rows"}: this rank's medians for every point of the sweep."""
    from vllm.distributed import parallel_state as ps

    ep = ps.get_ep_group()
    rank, world = ep.rank_in_group, ep.world_size
    cuda = ctx.backend == "nccl"
    cpu_group = ep.cpu_group
    link = (
        peer_copy_gbps(settings.link_mib, settings.repeats, cpu_group)
        if cuda
        else {"gbps": None, "why": "CPU ranks (gloo): no GPU link to measure"}
    )
    ctx.heartbeat()
    transport = run.spec.open(ctx)
    transport.prepare(_largest_case(run, settings, world))
    sink = partial_file(partial_dir, run.backend, rank)
    sink.parent.mkdir(parents=True, exist_ok=True)  # after the ranks met: see sweep.run_bench
    rows = []
    for point in run.points:
        inputs = rank_inputs(point, settings, rank, world)
        prepared = drivers.exchange(transport, inputs, point, settings, rank, world)
        base = drivers.baseline(inputs, point, settings, rank, ctx.device, group=None)
        with prepared.context:
            error = prepared.check()
            times = time_stages(prepared.stages, settings.warmup, settings.repeats, cuda, cpu_group)
        base_times = time_stages(base.stages, settings.warmup, settings.repeats, cuda, cpu_group)
        row = {
            "backend": run.backend,
            "tokens": point.tokens,
            "hidden": point.hidden,
            "dtype": point.dtype,
            "rank": rank,
            "dispatch_ms": times["dispatch"],
            "combine_ms": times["combine"],
            "total_ms": times["total"],
            "remote_bytes": prepared.remote_bytes,
            "check_error": error,
            "baseline": BASELINE,
            "baseline_ms": base_times["total"],
            "baseline_remote_bytes": base.remote_bytes,
        }
        rows.append(row)
        with sink.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        del prepared, base
        ctx.heartbeat()
    transport.close()
    if cuda:
        torch.cuda.synchronize()
    return {"rank": rank, "link": link, "rows": rows}
