"""vLLM's FlashInfer NVLink prepare/finalize classes driven as a MoE layer drives them.

One rank's forward steps, the way vLLM's ``MoERunner`` runs a layer whose
modular kernel holds ``FlashInferNVLinkOneSidedPrepareAndFinalize`` or
``...TwoSided...``: the forward context carries every DP rank's token count,
``prepare`` dispatches through the EP group's manager, the oracle's experts
(``reference.moe``) compute this rank's partial of every received row,
``finalize`` combines into the layer's output, then the runner's late
all-reduce rule runs with the class's own ``output_is_reduced()``.  Checked
against the oracle: dispatch row by row (each token of each source exactly
once on each rank owning one of its experts, the other rows invalid) and the
output within bf16.  Which class, and how its received rows are laid out,
the backend's transport says (``backends/*``: ``PREPARE_FINALIZE``).

The bug this catches (upstream PR 41382, vLLM <= 0.21): ``output_is_reduced()``
said False although combine had summed every rank's share, so with TP > 1 the
runner all-reduced again and the output came out ``tp`` times too large.  At
TP = 1 the extra all-reduce spans one rank and changes nothing, so the negative
control needs TP > 1.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import torch

from vllm_ep_kit.reference.moe import (
    RoutingCase,
    Tokens,
    expert_owner,
    moe_partial,
    moe_reference,
    source_tokens,
)
from vllm_ep_kit.reference.results import compared
from vllm_ep_kit.reference.tolerance import COMBINE

RUNNER_MODULE = "vllm.model_executor.layers.fused_moe.runner.moe_runner"


def prepare_finalize_class(backend: str):
    """vLLM's prepare/finalize class for ``backend`` (ImportError names what is absent)."""
    import importlib

    from vllm_ep_kit.backends.mnnvl import manager_transport

    module, _, name = manager_transport(backend).PREPARE_FINALIZE.partition(":")
    found = getattr(importlib.import_module(module), name, None)
    if found is None:
        raise ImportError(f"{module} has no {name}: a vLLM this check does not know")
    return found


def reducing_twice(cls):
    """Negative control: ``cls`` saying its output is not reduced (vLLM <= 0.21)."""
    return type(cls.__name__ + "ReducingTwice", (cls,), {"output_is_reduced": lambda self: False})


@functools.cache
def _late_reduce_rule():
    """The installed runner's ``_maybe_reduce_final_output``, found by what the runner module
    defines (looked up once per process, not per step)."""
    import importlib

    module = importlib.import_module(RUNNER_MODULE)
    owners: list[Any] = [  # the runner module's classes, whatever this vLLM defines
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if "_maybe_reduce_final_output" in vars(cls)
    ]
    if not owners:
        raise RuntimeError(
            f"{RUNNER_MODULE} defines no _maybe_reduce_final_output: a layer "
            "reduction rule this check does not know"
        )
    return owners[0]._maybe_reduce_final_output


def late_all_reduce(
    states: torch.Tensor, output_is_reduced: bool, tp: int, ep: int
) -> torch.Tensor:
    """vLLM's runner's own rule for the layer's final all-reduce (no SP, no shared experts),
    run on a stand-in runner holding only what the rule reads; not reimplemented here."""
    config = SimpleNamespace(
        is_sequence_parallel=False, skip_final_all_reduce=False, tp_size=tp, ep_size=ep
    )
    runner = SimpleNamespace(moe_config=config, _fused_output_is_reduced=output_is_reduced)
    return _late_reduce_rule()(runner, states, None, output_is_reduced)


def output_scale(out: torch.Tensor, expected: torch.Tensor) -> float | None:
    """The least-squares factor between the output and the oracle (1.0: right; ``tp``: the
    TP all-reduce ran once too often); None for a rank with no tokens."""
    norm = float((expected * expected).sum())
    return float((out.float() * expected).sum()) / norm if norm else None


def prepare_finalize_kwargs(
    cls, case: RoutingCase, max_num_tokens: int, num_dispatchers: int
) -> dict:
    """Constructor arguments for the installed class, for a layer of ``case``'s shape
    (0.22-0.32 take per-token byte counts, 0.33 a dispatch format and extra payload bytes:
    pass what it accepts)."""
    values = {
        "max_num_tokens": max_num_tokens,
        "top_k": case.top_k,
        "num_experts": case.num_experts,
        "hidden_size": case.hidden,
        "x_bytes_per_token": case.x_bytes_per_token,
        "x_sf_bytes_per_token": 0,
        "dispatch_format": None,
        "extra_payload_bytes_per_token": 0,
        "num_dispatchers": num_dispatchers,
    }
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [
        n
        for n, p in accepted.items()
        if n != "self" and n not in values and p.default is inspect.Parameter.empty
    ]
    if unknown:
        raise TypeError(f"{cls.__name__} needs {unknown}, which this check does not supply")
    return {k: v for k, v in values.items() if k in accepted}


RowKey = tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]  # (ids, weights, values)


def _row_keys(tokens: Tokens) -> Counter[RowKey]:
    """Each row as (ids, weights, values), counted: compares received rows in any order."""
    keys: Counter[RowKey] = Counter()
    for ids, w, x in zip(
        tokens.topk_ids.tolist(),
        tokens.topk_weights.tolist(),
        tokens.values().tolist(),
        strict=True,
    ):
        keys[(tuple(ids), tuple(w), tuple(x))] += 1
    return keys


def dispatch_findings(
    received: Tokens,
    case: RoutingCase,
    layout,
    ep_rank: int,
    block: int | None,
    local_ids_only: bool,
) -> list[str]:
    """Exactly the tokens owning an expert here, each once (a received row: any id valid);
    every other row invalid in all its top-k slots.  ``block``: rows per source rank when
    they arrive in source blocks (one-sided: the step's token bound), None when packed in
    source order (two-sided).  ``local_ids_only``: the ids of experts this rank lacks
    arrive as an invalid id (two-sided) rather than as they were."""
    from vllm.distributed import parallel_state as ps

    ep_ranks = list(ps.get_ep_group().ranks)
    owner = expert_owner(case.num_experts, len(ep_ranks))
    ids = received.topk_ids
    arrived = ((ids >= 0) & (ids < case.num_experts)).any(dim=1)
    findings = []
    sources = [[s] for s in range(len(ep_ranks))] if block else [list(range(len(ep_ranks)))]
    for group in sources:
        expected: Counter[RowKey] = Counter()
        for s in group:
            theirs = source_tokens(case, layout.dp_rank(ep_ranks[s]))
            here = owner[theirs.topk_ids.long()] == ep_rank
            mine = here.any(dim=1)
            their_ids = theirs.topk_ids
            if local_ids_only:
                their_ids = torch.where(here, their_ids, case.num_experts)
            expected += _row_keys(
                Tokens(theirs.x[mine], their_ids[mine], theirs.topk_weights[mine])
            )
        rows = slice(group[0] * block, (group[0] + 1) * block) if block else slice(None)
        keep = arrived[rows]
        got = _row_keys(
            Tokens(
                received.x[rows][keep],
                _as_invalid(ids[rows][keep], case),
                received.topk_weights[rows][keep],
            )
        )
        where = f"from EP rank {group[0]}" if block else "from all EP ranks"
        if got != expected:
            findings.append(
                f"{where}: {sum((got - expected).values())} rows not sent here, "
                f"{sum((expected - got).values())} sent rows missing"
            )
    return findings


def _as_invalid(ids: torch.Tensor, case: RoutingCase) -> torch.Tensor:
    """Ids outside [0, num_experts) as num_experts: one spelling of "invalid" to compare."""
    ids = ids.long()
    return torch.where((ids >= 0) & (ids < case.num_experts), ids, case.num_experts)


@contextlib.contextmanager
def _manager_on_ep_group(manager):
    """The EP group's communicator holding ``manager``, as vLLM's CudaCommunicator does."""
    from vllm.distributed import parallel_state as ps

    from vllm_ep_kit.harness.gloo_collectives import make_gloo_communicator
    from vllm_ep_kit.patches.base import swapped

    ep = ps.get_ep_group()
    stack = contextlib.ExitStack()
    with stack:
        if ep.device_communicator is None:
            stack.enter_context(swapped(ep, device_communicator=make_gloo_communicator(ep)))
        stack.enter_context(swapped(ep.device_communicator, all2all_manager=manager))
        yield


def rank_prepare_finalize_steps(
    ctx, backend: str, cases: list[RoutingCase], reduces_twice: bool = False
) -> dict:
    """Forward steps ``cases`` (one per step, ``tokens`` per DP rank) through one of vLLM's
    prepare/finalize for ``backend``, over FlashInfer's kernels emulated on CPU; per step
    a case result: the dispatch's findings (``dispatch_exact``, the note), the output
    against the oracle, and the output's ``scale`` against it (``detail``).  The steps are
    one layer's: they must share experts, top-k, hidden size and dtype."""
    from vllm.distributed import parallel_state as ps
    from vllm.model_executor.layers.fused_moe.config import FUSED_MOE_UNQUANTIZED_CONFIG
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import (
        TopKWeightAndReduceNoOP,
    )

    from tests.drivers.flashinfer_emulator import FlashInferKernelEmulator
    from tests.drivers.mnnvl_managers import build_manager
    from vllm_ep_kit.backends.forward import dp_forward_context
    from vllm_ep_kit.backends.mnnvl import manager_transport

    layout = ctx.layout
    ep = ps.get_ep_group()
    ep_rank, ep_size = ep.rank_in_group, ep.world_size
    shipped = prepare_finalize_class(backend)
    cls = reducing_twice(shipped) if reduces_twice else shipped
    transport = manager_transport(backend)
    in_blocks, local_ids_only = (
        transport.RECEIVES_IN_SOURCE_BLOCKS,
        transport.RECEIVES_LOCAL_IDS_ONLY,
    )
    shapes = {(c.num_experts, c.top_k, c.hidden, c.dtype) for c in cases}
    if len(shapes) != 1:
        raise ValueError(
            f"cases: one layer's steps share (experts, top_k, hidden, dtype), got {sorted(shapes)}"
        )
    bound = max(max(max(case.tokens) for case in cases), 1)  # the layer's token bound
    emulator = FlashInferKernelEmulator()
    steps = []
    with emulator.installed():
        manager = build_manager(backend)
        with _manager_on_ep_group(manager):
            pf = cls(**prepare_finalize_kwargs(cls, cases[0], bound, ep_size))
            for case in cases:
                start = time.perf_counter()
                mine = source_tokens(case, layout.dp_rank(ctx.rank))
                with dp_forward_context(ctx, case.tokens, sp=False):
                    x, x_sf, _, ids, w = pf.prepare(
                        mine.x.clone(),
                        mine.topk_weights.clone(),
                        mine.topk_ids.clone(),
                        case.num_experts,
                        None,
                        False,
                        FUSED_MOE_UNQUANTIZED_CONFIG,
                    )
                    got = Tokens(x=x, topk_ids=ids, topk_weights=w, x_scale=x_sf)
                    # one-sided blocks: the step's largest DP count (the forward context's),
                    # not the layer's bound
                    findings = dispatch_findings(
                        got,
                        case,
                        layout,
                        ep_rank,
                        max(case.tokens) if in_blocks else None,
                        local_ids_only,
                    )
                    partial = moe_partial(got, case.num_experts, ep_size, ep_rank)
                    out = torch.empty(mine.x.shape, dtype=case.combine_dtype)
                    pf.finalize(
                        out,
                        partial.to(case.combine_dtype),
                        mine.topk_weights,
                        mine.topk_ids,
                        False,
                        TopKWeightAndReduceNoOP(),
                    )
                    out = late_all_reduce(out, pf.output_is_reduced(), layout.tp, ep_size)
                expected = moe_reference(mine, case.num_experts)
                steps.append(
                    compared(
                        backend,
                        layout.describe(),
                        case,
                        out,
                        expected,
                        COMBINE[case.dtype],
                        start,
                        dispatch=findings,
                        scale=output_scale(out, expected),
                    )
                )
                ctx.heartbeat()
        manager.cleanup()
    return {
        "steps": steps,
        "output_is_reduced": pf.output_is_reduced(),
        "dispatches": emulator.dispatches,
        "combines": emulator.combines,
        "allocations": len(emulator.allocations),
    }
