"""Multi-rank test harness: spawn, rendezvous, watchdog, per-rank failure reports."""

from vllm_ep_kit.harness.rank import RankContext
from vllm_ep_kit.harness.runner import RankFailures, RankReport, run_ranks
from vllm_ep_kit.harness.skips import NotRunnableHere, skip_or_fail, strict_mode

__all__ = [
    "NotRunnableHere",
    "RankContext",
    "RankFailures",
    "RankReport",
    "run_ranks",
    "skip_or_fail",
    "strict_mode",
]
