"""The one interface every driven backend implements: prepare, dispatch, combine, close.

A transport lives inside one rank (the harness has built vLLM's parallel
state) and moves one case's tokens at a time.  ``check`` applies the
oracle's experts between dispatch and combine, the layer matrix applies
SiLU-MLP experts, ``bench`` times the two calls; none of them knows which
backend it drives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vllm_ep_kit.reference.formats import from_wire
from vllm_ep_kit.reference.moe import RoutingCase, Tokens

if TYPE_CHECKING:
    from vllm_ep_kit.backends.spec import Backend
    from vllm_ep_kit.harness.rank import RankContext


@dataclass
class Dispatched:
    """What ``dispatch`` delivered to this rank.

    ``tokens`` are the received rows in the case's dtype (fp8 rows with their
    scales), with any leading shape (a one-sided receive buffer is [ranks,
    max_tokens, ...]); rows that were not sent may hold junk, their ids are
    then invalid or another rank's.  ``state`` is what ``combine`` needs.
    """

    tokens: Tokens
    state: Any = None  # the backend's own (routing info, the token bound, ...)
    source_rows: int = 0  # rows this rank dispatched (combine returns as many)


class Transport:
    """Base class: a backend's dispatch and combine on this rank.

    Subclasses get ``(ctx, backend)``: the rank context (``ctx.layout``,
    ``ctx.device``, ``ctx.rank``) and their :class:`~vllm_ep_kit.backends.spec.Backend`.
    Every rank of the EP group calls each method together.
    """

    name = ""  # what moves the tokens, shown in result rows
    # This rank in the EP group and the group's size: each subclass's ``__init__`` sets them.
    rank: int
    world: int

    def __init__(self, ctx: RankContext, backend: Backend) -> None:
        self.ctx = ctx
        self.backend = backend
        self.case: RoutingCase | None = None  # set by ``prepare``

    @property
    def prepared_case(self) -> RoutingCase:
        """The case of the last ``prepare`` (dispatch and combine run after one)."""
        if self.case is None:
            raise AttributeError(f"{type(self).__name__}: no case prepared (call prepare first)")
        return self.case

    @property
    def max_tokens(self) -> int:
        """The per-rank token bound of the prepared case (at least 1)."""
        return max(max(self.prepared_case.tokens), 1)

    def prepare(self, case: RoutingCase) -> None:
        """Make buffers fit ``case`` (grow only, as vLLM's managers do)."""
        self.case = case

    def dispatch(self, tokens: Tokens) -> Dispatched:
        raise NotImplementedError

    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> torch.Tensor:
        """Sum the expert outputs ``partial`` (one row per received row) back to the
        sources: this rank's ``dispatched.source_rows`` rows."""
        raise NotImplementedError

    def expected_dispatch(self, source: Callable[[int], Tokens]) -> Tokens | None:
        """The exact rows ``dispatch`` must deliver here, given ``source(rank)`` -> that
        rank's dispatched tokens; None where the layout of received rows is the
        backend's own (then dispatch is checked through the combined output)."""
        return None

    def forward_context(self, case: RoutingCase) -> contextlib.AbstractContextManager[object]:
        """The context dispatch and combine run in (vLLM's forward context for AGRS)."""
        return contextlib.nullcontext()

    def after_case(self) -> None:
        """Called once per case after combine (e.g. a barrier before buffers are reused)."""

    def close(self) -> None:
        """Release what the transport allocated."""


def received(
    x: torch.Tensor,
    scale: torch.Tensor | None,
    ids: torch.Tensor,
    weights: torch.Tensor,
    case: RoutingCase,
) -> Tokens:
    """Received wire tensors as :class:`Tokens` (bytes viewed back as the case's format)."""
    x, scale = from_wire(case.dtype, x, scale)
    return Tokens(x=x, topk_ids=ids, topk_weights=weights, x_scale=scale)
