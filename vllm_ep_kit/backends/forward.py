"""vLLM's forward-pass plumbing around a MoE layer's all-to-all, shared by every consumer.

A forward context carrying every DP rank's token count (and, under sequence
parallelism, each TP rank's chunk size), and after combine either the TP
all-gather of the SP chunks trimmed back to the token count or, without SP,
the TP all-reduce of the EP partials.  ``check``, the layer matrix and
``bench`` use these around whichever backend's transport they drive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vllm_ep_kit.harness.rank import RankContext


@contextlib.contextmanager
def dp_forward_context(ctx: RankContext, tokens: tuple[int, ...], sp: bool) -> Iterator[None]:
    """vLLM's forward context for one step with ``tokens`` per DP rank."""
    from vllm.forward_context import get_forward_context, set_forward_context

    layout = ctx.layout
    assert layout is not None and ctx.vllm_config is not None, (
        "a forward context needs vLLM's parallel state"
    )
    counts = torch.tensor(tokens, dtype=torch.int32)
    with set_forward_context(
        None,
        ctx.vllm_config,
        num_tokens=tokens[layout.dp_rank(ctx.rank)],
        num_tokens_across_dp=counts,
    ):
        dp_meta = get_forward_context().dp_metadata
        sizes = dp_meta.sp_local_sizes(layout.tp if sp else 1) if dp_meta else None
        with sizes if sizes is not None else contextlib.nullcontext():
            yield


# How the SP wrapper cuts the gathered output (the negative controls use the two wrong ones).
TRIM_TO_TOKENS = "tokens"  # the input's token count: every TP rank's chunk, no padding (ours)
TRIM_NONE = "none"  # keeps the chunk padding: ceil(n / tp) * tp rows
# Upstream's wrapper trims to ``hidden_states.shape[0]`` after ``hidden_states`` became the
# local chunk: ceil(n / tp) rows, only TP rank 0's chunk (half the rows at tp=2).
TRIM_TO_LOCAL_CHUNK = "local_chunk"
TRIM_MODES = (TRIM_TO_TOKENS, TRIM_NONE, TRIM_TO_LOCAL_CHUNK)


def gather_sp_chunks(
    out: torch.Tensor, num_tokens: int, trim: str = TRIM_TO_TOKENS
) -> torch.Tensor:
    """All-gather the TP ranks' SP chunks, then cut as ``trim`` says (``TRIM_MODES``)."""
    from vllm.distributed import tensor_model_parallel_all_gather

    if trim not in TRIM_MODES:
        raise ValueError(f"trim={trim!r}: expected one of {', '.join(TRIM_MODES)}")
    local_rows = out.shape[0]
    gathered = tensor_model_parallel_all_gather(out.contiguous(), 0)
    if trim == TRIM_NONE:
        return gathered
    return gathered[: num_tokens if trim == TRIM_TO_TOKENS else local_rows]


def reduce_tp_partials(out: torch.Tensor, tp: int) -> torch.Tensor:
    """Without SP every TP rank holds the same tokens: sum the EP partials over TP."""
    from vllm.distributed import parallel_state as ps

    return ps.get_tp_group().all_reduce(out) if tp > 1 else out
