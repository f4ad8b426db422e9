"""What one all-to-all backend is, as data: its needs, what it moves, how to drive it.

A backend module builds one :class:`Backend` and registers it; ``check``,
the MoE layer matrix, ``bench`` and ``doctor`` read only these fields, so
adding a backend never means editing them.  The spec is plain data that
pickles by reference (rank processes receive it as an argument), and its
transport is named as ``"module:Class"`` so reading the registry imports
neither vLLM nor FlashInfer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from vllm_ep_kit.reference.layout import ParallelLayout

if TYPE_CHECKING:  # the transport module imports torch: not when reading the registry
    from vllm_ep_kit.backends.transport import Transport
    from vllm_ep_kit.harness.rank import RankContext

# Whose tokens enter ``dispatch``:
DP_SOURCES = "dp"  # each DP rank's tokens (replicated over TP; TP-chunked under SP), as vLLM's AGRS
EP_SOURCES = "ep"  # every EP rank dispatches its own tokens
# Where ``dispatch`` delivers a token:
TO_OWNERS = "owners"  # once to each EP rank owning one of its experts (token-routed)
TO_GROUP = "group"  # to every rank of the group (all-gather)
# every MoE activation format the kit names (Backend.formats)
ALL_FORMATS = ("bf16", "fp8", "fp8-block", "nvfp4", "mxfp8", "mxfp4")


@dataclass(frozen=True)
class Needs:
    """What a backend needs from the machine; ``usability`` checks each in turn."""

    cpu_ok: bool = False  # runs over gloo on a CPU-only machine
    min_gpus: int = 1
    nvlink: bool = False
    mnnvl_handles: bool = False
    modules: tuple[str, ...] = ()  # importable modules it needs (e.g. deep_ep)
    pynccl: bool = False  # on GPUs its collectives go through vLLM's PyNccl
    vllm: bool = True  # runs inside vLLM's parallel state
    rocm: bool = False  # AMD GPUs under ROCm only
    multicast: bool = False  # NVSwitch multicast (SHARP) between the GPUs
    nccl: str = ""  # the NCCL release it needs at least ("" none beyond torch's)

    def describe(self) -> str:
        """One line for skip reasons: what it needs beyond a CUDA GPU."""
        parts: list[str] = ["ROCm"] if self.rocm else []
        if self.min_gpus > 1:
            parts.append(f"{self.min_gpus}+ GPUs" + (" with NVLink" if self.nvlink else ""))
        if self.multicast:
            parts.append("NVSwitch multicast")
        if self.nccl:
            parts.append(f"NCCL >= {self.nccl}")
        parts += [m.split(".")[0] for m in self.modules]
        return ", ".join(parts) or "CUDA GPUs"


def _ep_wider_than_one(layout: ParallelLayout) -> str:
    return "" if layout.ep_size >= 2 else "EP group of one rank: nothing to exchange"


@dataclass(frozen=True)
class Backend:
    """One all-to-all backend: everything the kit's tools know about it, in one place."""

    name: str
    needs: Needs = Needs()
    note: str = ""
    aliases: tuple[str, ...] = ()  # other names vLLM accepts for it
    # The all2all_backend vLLM's config is built with (None: vLLM's default, e.g. for a
    # backend vLLM does not know, driven by the kit's own transport).
    vllm_name: str | None = None
    # "module:Class" (or the class); None: not driven
    transport: str | type[Transport] | None = None
    sources: str = EP_SOURCES
    delivers_to: str = TO_OWNERS
    check_dtypes: tuple[str, ...] = ()  # payload dtypes ``check`` moves through it
    check_hidden: int = 64  # hidden size of check's cases (fp8 scale rows need 512)
    bench_dtypes: tuple[str, ...] = ()  # payload dtypes ``bench`` times
    layer_quants: tuple[str, ...] = ()  # activation dtypes vLLM's MoE path takes with it
    layer_driven: tuple[str, ...] = ()  # of those, the ones this kit's layer cells drive
    takes_sp: bool = False  # in vLLM's use_sequence_parallel_moe list
    # "module:function" of the installed vLLM answering whether the installed FlashInfer
    # (or other package) offers what vLLM uses with this backend; "" when vLLM has none.
    vllm_has: str = ""
    # where vLLM shows what the kit states here (its needs, its note), for a reader to check
    source: str = ""
    # The MoE activation formats vLLM moves through it as they are ("bf16", "fp8-block",
    # "fp8", "nvfp4", "mxfp8", "mxfp4"); a format not named is dispatched in bf16 and
    # quantised after.  ``refuses``: formats vLLM fails on with this backend ("quantized":
    # any quantisation).  ``formats_source``: the vLLM code that shows both.
    formats: tuple[str, ...] = ()
    refuses: tuple[str, ...] = ()
    formats_source: str = ""
    # What vLLM does to CUDA graphs with it beyond what its CompilationConfig decides
    # (preflight asks that): "" nothing, else the statement and its source.
    graphs: str = ""
    applies_to: Callable[[ParallelLayout], str] = _ep_wider_than_one  # "" or why not

    def __post_init__(self) -> None:
        if self.sources not in (DP_SOURCES, EP_SOURCES):
            raise ValueError(
                f"backend {self.name}: sources={self.sources!r}: expected "
                f"{DP_SOURCES!r} or {EP_SOURCES!r}"
            )
        if self.delivers_to not in (TO_OWNERS, TO_GROUP):
            raise ValueError(
                f"backend {self.name}: delivers_to={self.delivers_to!r}: expected "
                f"{TO_OWNERS!r} or {TO_GROUP!r}"
            )
        unknown = set(self.layer_driven) - set(self.layer_quants)
        if unknown:
            raise ValueError(
                f"backend {self.name}: layer_driven {sorted(unknown)} not in "
                f"layer_quants {self.layer_quants}"
            )

    @property
    def driven(self) -> bool:
        """Whether this kit has a transport that moves tokens through it."""
        return self.transport is not None

    def transport_class(self) -> type[Transport]:
        """The transport class (imported on first use: it may import vLLM)."""
        if self.transport is None:
            raise LookupError(f"backend {self.name}: this kit drives no transport for it")
        if isinstance(self.transport, str):
            module, _, attr = self.transport.partition(":")
            return cast("type[Transport]", getattr(importlib.import_module(module), attr))
        return self.transport

    def open(self, ctx: RankContext) -> Transport:
        """This rank's transport, inside the rank's vLLM parallel state."""
        return self.transport_class()(ctx, self)
