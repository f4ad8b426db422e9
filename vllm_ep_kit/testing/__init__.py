"""Multi-rank test harness: spawn, rendezvous, watchdog, per-rank failure reports."""

from vllm_ep_kit.testing.rank import RankContext
from vllm_ep_kit.testing.runner import RankFailures, RankReport, run_ranks
from vllm_ep_kit.testing.skips import skip_or_fail, strict_mode

__all__ = ["RankContext", "RankFailures", "RankReport", "run_ranks", "skip_or_fail", "strict_mode"]
