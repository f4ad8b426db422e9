"""Run a bench plan: one set of ranks per backend, progress while they run, nothing lost.

Progress comes from the ranks' partial files (``rank.partial_file``): a point
is shown once every rank has written it.  A run whose ranks fail keeps the
points all ranks finished and records the failure; the next backend still runs.
"""

from __future__ import annotations

import threading
from pathlib import Path

from vllm_ep_kit.commands.bench.plan import BenchPlan, BenchRun
from vllm_ep_kit.commands.bench.rank import rank_bench
from vllm_ep_kit.commands.bench.report import link_summary, merge_ranks, read_partial_rows


def _show_new(run: BenchRun, rows: list[dict], shown: set, on_point) -> None:
    """``on_point`` for each row not shown yet (``shown``: (hidden, dtype, tokens) keys)."""
    for row in rows:
        key = (row["hidden"], row["dtype"], row["tokens"])
        if key not in shown:
            shown.add(key)
            on_point(run, row, len(shown))


def _watch(run: BenchRun, partial_dir: Path, world: int, shown: set, on_point, stop) -> None:
    while not stop.wait(0.5):
        _show_new(
            run,
            merge_ranks(read_partial_rows(partial_dir, run.backend), world, None),
            shown,
            on_point,
        )


def run_bench(
    plan: BenchPlan,
    partial_dir: Path,
    on_start=None,
    on_point=None,
    on_error=None,
    timeout_s: float = 300.0,
) -> dict:
    """{"results": merged rows, "links": per-run link limit, "failures": failed runs}.

    ``on_start(run)``; ``on_point(run, row, done)`` once per point (during the
    run, without ``vs_link``, which needs the finished link measurement);
    ``on_error(run, report)`` with the ranks' full failure report.
    """
    from vllm_ep_kit.harness.runner import RankFailures, run_ranks

    # The ranks create partial_dir once they have met (rank_bench): under torchrun
    # the lead checks that --out is new before it joins them.
    results, links, failures = [], [], []
    for run in plan.runs:
        world = run.layout.world_size
        if on_start:
            on_start(run)
        shown: set = set()
        show = on_point or (lambda *a: None)
        stop = threading.Event()
        watcher = threading.Thread(
            target=_watch, daemon=True, args=(run, partial_dir, world, shown, show, stop)
        )
        watcher.start()
        try:
            per_rank = run_ranks(
                rank_bench,
                world,
                run,
                plan.settings,
                str(partial_dir),
                backend=plan.device_backend,
                layout=run.layout,
                all2all_backend=run.spec.vllm_name,
                timeout_s=timeout_s,
            )
            link = link_summary([r["link"] for r in per_rank])
            rows = merge_ranks([row for r in per_rank for row in r["rows"]], world, link["gbps"])
        except RankFailures as exc:
            if on_error:
                on_error(run, str(exc))
            link = {"gbps": None, "why": "run failed"}
            rows = merge_ranks(read_partial_rows(partial_dir, run.backend), world, None)
            failures.append(
                {
                    "backend": run.backend,
                    "error": exc.summary(),
                    "points_measured": len(rows),
                    "points_planned": len(run.points),
                }
            )
        finally:
            stop.set()
            watcher.join()
        _show_new(run, rows, shown, show)
        results += rows
        links.append({"backend": run.backend, **link})
    return {"results": results, "links": links, "failures": failures}
