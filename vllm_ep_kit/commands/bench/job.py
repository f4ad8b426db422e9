"""One ``bench`` invocation as data: its arguments checked and planned before any rank
starts, then measured into the report ``bench.json`` holds.

:func:`plan_job` answers every argument (world, tokens, dtypes, the output folder,
the backends usable here) or raises :class:`~vllm_ep_kit.commands.bench.plan.BenchArgumentError`
naming it; :func:`run_job` runs the plan and returns the report; :func:`load_report`
reads a saved one.  The CLI parses, prints progress and renders.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_ep_kit.commands.bench import plan as bench_plan
from vllm_ep_kit.commands.bench.report import check_report
from vllm_ep_kit.commands.jobs import (
    JobArgumentError,
    cpu_rank_limit,
    unusable_out_dir,
    world_for_job,
)


@dataclass(frozen=True)
class BenchRequest:
    """What the user asked for (None: the default for this host)."""

    world_size: int | None = None
    backends: list[str] | None = None
    tokens: list[int] | None = None
    hidden: list[int] | None = None
    dtypes: list[str] | None = None
    top_k: int | None = None
    experts: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    out: str | None = None


@dataclass(frozen=True)
class BenchJob:
    world: int
    gpu_count: int
    device: str  # the GPUs' description, or "CPU"
    settings: bench_plan.BenchSettings
    plan: bench_plan.BenchPlan
    out: Path

    @property
    def timer(self) -> str:
        return (
            "CUDA events" if self.gpu_count else "wall clock on CPU ranks (gloo): not GPU figures"
        )


def plan_job(request: BenchRequest, *, lead: bool = True) -> BenchJob:
    """Every argument answered, then the plan (reading which backends are usable imports
    vLLM, seconds: it comes last).  ``lead``: this process checks the output folder (under
    torchrun the others would race with its partial rows)."""
    from vllm_ep_kit import backends
    from vllm_ep_kit.harness import probes, torchrun

    gpu = probes.gpus()
    local_gpus = gpu.data.get("count", 0)
    try:
        (world,), gpu_count = world_for_job(
            "--world-size",
            [request.world_size] if request.world_size else None,
            [max(local_gpus, 2)],
            local_gpus,
        )
    except JobArgumentError as exc:
        raise bench_plan.BenchArgumentError(str(exc)) from None
    too_many = cpu_rank_limit("--world-size", [world], gpu_count)
    if too_many:
        raise bench_plan.BenchArgumentError(too_many)
    given = {
        "top_k": request.top_k,
        "num_experts": request.experts,
        "warmup": request.warmup,
        "repeats": request.repeats,
    }
    settings = bench_plan.BenchSettings(**{k: v for k, v in given.items() if v is not None})
    if torchrun.active() and not request.out:
        raise bench_plan.BenchArgumentError(
            "--out: required under torchrun (every rank writes its partial rows there; a "
            "default named by each process's clock could differ)"
        )
    out = Path(request.out or datetime.datetime.now().strftime("bench-%Y%m%d-%H%M%S"))
    why = unusable_out_dir(out) if lead else ""
    if why:
        raise bench_plan.BenchArgumentError(f"--out: {out} {why}")
    status = backends.usability()
    plan = bench_plan.make_bench_plan(
        world,
        request.backends,
        request.tokens
        or list(bench_plan.DEFAULT_TOKENS if gpu_count else bench_plan.CPU_DEFAULT_TOKENS),
        request.hidden
        or list(bench_plan.DEFAULT_HIDDEN if gpu_count else bench_plan.CPU_DEFAULT_HIDDEN),
        request.dtypes or list(bench_plan.DEFAULT_DTYPES),
        settings,
        gpu_count,
        usable=[row.name for row in status if row.usable],
        unusable={row.name: row.reason for row in status if not row.usable},
    )
    return BenchJob(world, gpu_count, gpu.detail if gpu_count else "CPU", settings, plan, out)


def run_job(
    job: BenchJob,
    command: str,
    *,
    on_start: Callable[[Any], None],
    on_point: Callable[[Any, dict, int], None],
    on_error: Callable[[Any, str], None],
    timeout_s: float,
    write: bool = True,
) -> dict:
    """Measure the plan; the report (``bench.json`` in ``job.out`` where ``write``)."""
    from vllm_ep_kit.commands.bench.sweep import run_bench
    from vllm_ep_kit.harness import probes

    measured = run_bench(
        job.plan,
        job.out / "partial",
        on_start=on_start,
        on_point=on_point,
        on_error=on_error,
        timeout_s=timeout_s,
    )
    report = {
        "meta": {
            "command": command,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "world_size": job.world,
            "device": job.device,
            "timer": job.timer,
            "transport": job.plan.device_backend,
            "versions": probes.versions(),
            "settings": job.settings.__dict__,
        },
        **measured,
        "not_run": [{"what": w, "why": y} for w, y in job.plan.skipped],
    }
    if write:
        (job.out / "bench.json").write_text(json.dumps(report, indent=2))
    return report


def load_report(path: Path) -> dict:
    """A saved ``bench.json``, or BenchArgumentError naming it and what is wrong."""
    try:
        report = json.loads(path.read_text())
        check_report(report)
    except (OSError, ValueError) as exc:
        raise bench_plan.BenchArgumentError(
            f"--from-json: {path}: not a bench report ({exc})"
        ) from None
    return report
