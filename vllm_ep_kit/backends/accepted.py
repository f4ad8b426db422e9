"""The all-to-all backend names the installed vLLM accepts, as that release treats them.

Read from vLLM itself, not from its version: the names are the arguments of its
config's literal type (``vllm.config.parallel.All2AllBackend``); what a removed name
falls back to is what ``ParallelConfig`` leaves in ``all2all_backend`` after building
with it (0.33 turns ``naive`` and ``pplx`` into ``allgather_reducescatter``, with a
warning); whether a name takes vLLM's sequence-parallel MoE path is what its
``use_sequence_parallel_moe`` answers for an EP layout with TP and DP above one.  An
alias is resolved where vLLM's CUDA communicator builds its manager, which needs a GPU to
watch; it is stated once here, with the source it comes from, and listed only where the
installed vLLM accepts both names.
"""

from __future__ import annotations

import logging
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

# alias -> (the backend vLLM runs for it, where vLLM says so)
ALIASES = {
    "flashinfer_all2allv": (
        "flashinfer_nvlink_two_sided",
        "vllm/distributed/device_communicators/cuda_communicator.py, CudaCommunicator."
        "__init__: 'flashinfer_all2allv' is deprecated and has been renamed",
    ),
}
ALIAS, FALLBACK = "alias", "fallback"


@dataclass(frozen=True)
class Accepted:
    """One name ``--all2all-backend`` takes."""

    name: str
    runs_as: str  # the backend vLLM builds for it (the name itself, but for aliases and fallbacks)
    how: str  # "" for a backend of its own, ALIAS or FALLBACK
    sequence_parallel: bool  # vLLM's sequence-parallel MoE path, for an EP layout with TP, DP > 1

    def describe(self) -> str:
        if self.how == ALIAS:
            return f"alias of {self.runs_as}"
        if self.how == FALLBACK:
            return f"removed: vLLM falls back to {self.runs_as}, with a warning"
        return ""


class NotReadable(RuntimeError):
    """The installed vLLM does not say (no vLLM, or a release that keeps it elsewhere)."""


@cache
def accepted() -> tuple[Accepted, ...]:
    """Every name the installed vLLM accepts, in its own order; raises :class:`NotReadable`."""
    try:
        from vllm.config.parallel import All2AllBackend, ParallelConfig
    except ImportError as exc:
        raise NotReadable(f"vLLM's ParallelConfig does not import: {exc}") from exc
    names = typing.get_args(All2AllBackend)
    if not names:
        raise NotReadable("vllm.config.parallel.All2AllBackend names no backend")
    return tuple(_read(ParallelConfig, name, names) for name in names)


def _read(config_class: Any, name: str, names: tuple[str, ...]) -> Accepted:
    runs_as, how = name, ""
    target = ALIASES.get(name, ("", ""))[0]
    if target in names:
        runs_as, how = target, ALIAS
    else:
        built = _built_as(config_class, name)
        if built != name:
            runs_as, how = built, FALLBACK
    layout = types.SimpleNamespace(
        all2all_backend=runs_as,
        enable_expert_parallel=True,
        tensor_parallel_size=2,
        data_parallel_size=2,
    )
    sequence_parallel = bool(config_class.use_sequence_parallel_moe.fget(layout))
    return Accepted(name, runs_as, how, sequence_parallel)


def _built_as(config_class: Any, name: str) -> str:
    """What ``all2all_backend`` holds once vLLM's ParallelConfig is built with ``name``
    (its warning about a removed name held back: the row says it)."""
    logger = logging.getLogger("vllm.config.parallel")
    previous = logger.disabled
    logger.disabled = True
    try:
        return str(config_class(all2all_backend=name).all2all_backend)
    except Exception as exc:
        raise NotReadable(f"ParallelConfig(all2all_backend={name!r}) raised {exc!r}") from exc
    finally:
        logger.disabled = previous
