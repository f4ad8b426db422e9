"""Multi-rank test harness: spawn, rendezvous, watchdog, per-rank failure reports.

Its names load on first use, so a command that needs only ``skips`` (every command's
"cannot run here") does not import torch through the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm_ep_kit.harness.rank import RankContext
    from vllm_ep_kit.harness.runner import RankFailures, RankReport, run_ranks
    from vllm_ep_kit.harness.skips import NotRunnableHere, skip_or_fail, strict_mode

_HOME = {
    "RankContext": "rank",
    "RankFailures": "runner",
    "RankReport": "runner",
    "run_ranks": "runner",
    "NotRunnableHere": "skips",
    "skip_or_fail": "skips",
    "strict_mode": "skips",
}
__all__ = [
    "NotRunnableHere",
    "RankContext",
    "RankFailures",
    "RankReport",
    "run_ranks",
    "skip_or_fail",
    "strict_mode",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
