"""Run by test_torchrun.py under torchrun: faults that must fail every rank's run naming the rank.

Not collected by pytest (a script): after the last case one rank has left the job.
Writes one JSON line per case to ``$FAULT_CASE_OUT/rank<N>.jsonl``: what ``run_ranks``
returned or raised on that rank (one file per rank: the ranks share stdout).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from vllm_ep_kit.harness import RankFailures, run_ranks


def rank_returns_a_class_only_it_can_import(ctx, folder):
    if ctx.rank != ctx.world_size - 1:
        return ctx.rank
    sys.path.insert(0, folder)
    import only_on_the_last_rank

    return only_on_the_last_rank.Value()


def rank_leaves_the_job(ctx):
    if ctx.rank == ctx.world_size - 1:
        os._exit(0)  # as a library calling exit() in a worker does
    return ctx.rank


def report(case, call, *args):
    try:
        outcome = {"values": [type(v).__name__ for v in call(*args)]}
    except RankFailures as exc:
        outcome = {
            "failed_ranks": exc.failed_ranks,
            "first": exc.reports[0].headline() if exc.reports else "",
        }
    except BaseException as exc:  # noqa: BLE001 (what the test must never see)
        outcome = {"raw": f"{type(exc).__name__}: {exc}"}
    rank = int(os.environ["RANK"])
    with open(Path(os.environ["FAULT_CASE_OUT"]) / f"rank{rank}.jsonl", "a") as out:
        out.write(json.dumps({"case": case, "rank": rank, **outcome}) + "\n")


def main():
    world = int(os.environ["WORLD_SIZE"])
    folder = tempfile.mkdtemp()
    (Path(folder) / "only_on_the_last_rank.py").write_text("class Value:\n    pass\n")
    report(
        "unpicklable-elsewhere",
        lambda: run_ranks(
            rank_returns_a_class_only_it_can_import, world, folder, backend="gloo", timeout_s=60
        ),
    )
    report("exit-0", lambda: run_ranks(rank_leaves_the_job, world, backend="gloo", timeout_s=60))


if __name__ == "__main__":
    main()
