""" "Not runnable here": the harness's own error, and the one switch that decides its fate.

Upstream review asked whether CI should fail rather than skip when a GPU test
cannot run (missing CAP_SYS_PTRACE, too few GPUs).  Both are right for
different users, so every "cannot run here" in this package raises
:class:`NotRunnableHere` through :func:`skip_or_fail`, with the precise reason.
The harness never imports pytest for it: the pytest plugin reports the error as
a skip by default, and as a failure with the same reason when
``VLLM_EP_KIT_STRICT=1`` (or pytest ``--ep-strict``, which sets it so spawned
ranks see it too); the command line prints the reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

STRICT_ENV = "VLLM_EP_KIT_STRICT"


class NotRunnableHere(Exception):
    """A requirement of the run is missing on this machine; the message says which."""


def strict_mode() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def skip_or_fail(reason: str) -> NoReturn:
    """Stop the run: ``reason`` says what this machine lacks.  Under pytest the current
    test is skipped (default) or failed (strict mode); see :func:`strict_failure`."""
    raise NotRunnableHere(reason)


def strict_failure(reason: str) -> str:
    """The failure strict mode reports for a missing requirement."""
    return f"strict mode ({STRICT_ENV}=1), required capability missing: {reason}"


def require_gpus(ranks_here: int) -> None:
    """One CUDA GPU per rank on this host (the probes' NVML count: no CUDA context here)."""
    from vllm_ep_kit.harness.probes import gpu_count

    have = gpu_count()
    if have < ranks_here:
        skip_or_fail(f"needs {ranks_here} CUDA GPU{'s' if ranks_here > 1 else ''}, {have} visible")


def require_cpu_host_or_gpus(world_size: int) -> None:
    """A gloo world with vLLM's parallel state, on a host that has GPUs.

    There vLLM picks its CUDA platform and binds rank r to ``cuda:r`` whatever
    the process-group backend (measured on 2x H200: 4 gloo ranks fail with
    "invalid device ordinal" on ranks 2 and 3; on 1x H200, 2 gloo ranks of a
    pooled task hang in the CUDA communicator's symmetric-memory rendezvous), so
    the case needs a GPU per rank.
    """
    from vllm_ep_kit.harness.probes import gpu_count

    have = gpu_count()
    if 0 < have < world_size:
        skip_or_fail(
            f"vLLM's CUDA platform binds each of the {world_size} ranks to its own "
            f"GPU, {have} visible (this gloo case runs on CPU-only hosts)"
        )
