"""Skip locally, fail in strict mode: one switch for every capability check.

Upstream review asked whether CI should fail rather than skip when a GPU test
cannot run (missing CAP_SYS_PTRACE, too few GPUs).  Both are right for
different users, so every "cannot run here" in this package goes through
:func:`skip_or_fail`: a skip with the precise reason by default, a failure
with the same reason when ``VLLM_EP_KIT_STRICT=1`` (or pytest ``--ep-strict``,
which sets it so spawned ranks see it too).
"""

from __future__ import annotations

import os
from typing import NoReturn

STRICT_ENV = "VLLM_EP_KIT_STRICT"


class NotRunnableHere(Exception):
    """Raised outside pytest when a requirement of the run is missing."""


def strict_mode() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip (default) or fail (strict mode) the current test with ``reason``."""
    try:
        import pytest
    except ImportError:  # used by the CLI without pytest installed
        raise NotRunnableHere(reason) from None
    if strict_mode():
        pytest.fail(
            f"strict mode ({STRICT_ENV}=1), required capability missing: {reason}", pytrace=False
        )
    pytest.skip(reason)
