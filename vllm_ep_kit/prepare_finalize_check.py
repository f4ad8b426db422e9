"""vLLM's FlashInfer one-sided prepare/finalize driven as a MoE layer drives it.

One rank's forward step, the way vLLM's ``MoERunner`` runs a layer whose
modular kernel is ``FlashInferNVLinkOneSidedPrepareAndFinalize``: the forward
context carries every DP rank's token count, ``prepare`` dispatches through
the EP group's one-sided manager, the oracle's experts (``reference.moe``)
compute this rank's partial of every received row, ``finalize`` combines into
the layer's output, then the runner's late all-reduce rule runs with the
prepare/finalize's own ``output_is_reduced()``.  The result is checked
against the oracle, dispatch row by row (each token of each source exactly
once on each rank owning one of its experts) and the output within bf16.

The bug this catches (upstream PR 41382, vLLM <= 0.21): ``output_is_reduced()``
said False although combine had summed every rank's share, so with TP > 1 the
runner all-reduced again and the output came out ``tp`` times too large.  At
TP = 1 the extra all-reduce spans one rank and changes nothing, so the negative
control needs TP > 1.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from types import SimpleNamespace

import torch

from vllm_ep_kit.reference.moe import (
    TOLERANCE,
    RoutingCase,
    Tokens,
    expert_owner,
    mismatch,
    moe_partial,
    moe_reference,
    source_tokens,
)

PREPARE_FINALIZE_MODULE = "vllm.model_executor.layers.fused_moe.prepare_finalize." \
                          "flashinfer_nvlink_one_sided"
RUNNER_MODULE = "vllm.model_executor.layers.fused_moe.runner.moe_runner"


def one_sided_class():
    """vLLM's one-sided prepare/finalize class (ImportError names the module if absent)."""
    import importlib

    module = importlib.import_module(PREPARE_FINALIZE_MODULE)
    return module.FlashInferNVLinkOneSidedPrepareAndFinalize


def reducing_twice(cls):
    """Negative control: ``cls`` saying its output is not reduced (vLLM <= 0.21)."""
    return type(cls.__name__ + "ReducingTwice", (cls,), {"output_is_reduced": lambda self: False})


def late_all_reduce(states: torch.Tensor, output_is_reduced: bool, tp: int, ep: int
                    ) -> torch.Tensor:
    """vLLM's runner's own rule for the layer's final all-reduce (no SP, no shared experts),
    found in the installed runner by what it defines, not reimplemented here."""
    import importlib

    module = importlib.import_module(RUNNER_MODULE)
    owners = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
              if "_maybe_reduce_final_output" in vars(cls)]
    if not owners:
        raise RuntimeError(f"{RUNNER_MODULE} defines no _maybe_reduce_final_output: a layer "
                           "reduction rule this check does not know")
    config = SimpleNamespace(is_sequence_parallel=False, skip_final_all_reduce=False,
                             tp_size=tp, ep_size=ep)
    runner = SimpleNamespace(moe_config=config, _fused_output_is_reduced=output_is_reduced)
    return owners[0]._maybe_reduce_final_output(runner, states, None, output_is_reduced)


def output_scale(out: torch.Tensor, expected: torch.Tensor) -> float | None:
    """The least-squares factor between the output and the oracle (1.0: right; ``tp``: the
    TP all-reduce ran once too often); None for a rank with no tokens."""
    norm = float((expected * expected).sum())
    return float((out.float() * expected).sum()) / norm if norm else None


def prepare_finalize_kwargs(cls, case: RoutingCase, max_num_tokens: int,
                            num_dispatchers: int) -> dict:
    """Constructor arguments for the installed class, for a layer of ``case``'s shape
    (0.22-0.32 take per-token byte counts, 0.33 a dispatch format and extra payload bytes:
    pass what it accepts)."""
    elem = torch.tensor([], dtype=case.torch_dtype).element_size()
    values = {"max_num_tokens": max_num_tokens, "top_k": case.top_k,
              "num_experts": case.num_experts, "hidden_size": case.hidden,
              "x_bytes_per_token": case.hidden * elem, "x_sf_bytes_per_token": 0,
              "dispatch_format": None, "extra_payload_bytes_per_token": 0,
              "num_dispatchers": num_dispatchers}
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [n for n, p in accepted.items() if n != "self" and n not in values
               and p.default is inspect.Parameter.empty]
    if unknown:
        raise TypeError(f"{cls.__name__} needs {unknown}, which this check does not supply")
    return {k: v for k, v in values.items() if k in accepted}


def _row_keys(tokens: Tokens) -> Counter:
    """Each row as (ids, weights, values), counted: compares received rows in any order."""
    keys = Counter()
    for ids, w, x in zip(tokens.topk_ids.tolist(), tokens.topk_weights.tolist(),
                         tokens.values().tolist()):
        keys[(tuple(ids), tuple(w), tuple(x))] += 1
    return keys


def dispatch_findings(received: Tokens, bound: int, case: RoutingCase, layout,
                      ep_rank: int) -> list[str]:
    """Exactly each source's tokens owning an expert here, in its block; the rest invalid."""
    from vllm.distributed import parallel_state as ps

    ep_ranks = list(ps.get_ep_group().ranks)
    owner = expert_owner(case.num_experts, len(ep_ranks))
    findings = []
    ids = received.topk_ids.reshape(len(ep_ranks), bound, case.top_k)
    for s, global_rank in enumerate(ep_ranks):
        theirs = source_tokens(case, layout.dp_rank(global_rank))
        mine = (owner[theirs.topk_ids.long()] == ep_rank).any(dim=1)
        expected = _row_keys(Tokens(theirs.x[mine], theirs.topk_ids[mine],
                                    theirs.topk_weights[mine]))
        block = slice(s * bound, (s + 1) * bound)
        valid = (ids[s] >= 0).all(dim=1) & (ids[s] < case.num_experts).all(dim=1)
        got = _row_keys(Tokens(received.x[block][valid], received.topk_ids[block][valid],
                               received.topk_weights[block][valid]))
        if got != expected:
            findings.append(f"from EP rank {s}: {sum((got - expected).values())} rows not "
                            f"sent here, {sum((expected - got).values())} sent rows missing")
        if int((ids[s] >= 0).any(dim=1).sum()) != int(valid.sum()):
            findings.append(f"from EP rank {s}: rows with partly invalid expert ids")
    return findings


@contextlib.contextmanager
def _manager_on_ep_group(manager):
    """The EP group's communicator holding ``manager``, as vLLM's CudaCommunicator does."""
    from vllm.distributed import parallel_state as ps

    from vllm_ep_kit.patches.base import swapped
    from vllm_ep_kit.testing.gloo_collectives import make_gloo_communicator

    ep = ps.get_ep_group()
    stack = contextlib.ExitStack()
    with stack:
        if ep.device_communicator is None:
            stack.enter_context(swapped(ep, device_communicator=make_gloo_communicator(ep)))
        stack.enter_context(swapped(ep.device_communicator, all2all_manager=manager))
        yield


def rank_one_sided_steps(ctx, cases: list[RoutingCase], reduces_twice: bool = False) -> dict:
    """Forward steps ``cases`` (one per step, ``tokens`` per DP rank) through one
    prepare/finalize of vLLM's, over FlashInfer's kernels emulated on CPU; per step the
    findings (empty: right) and the output's scale against the oracle.  The steps are one
    layer's: they must share experts, top-k, hidden size and dtype."""
    from vllm.distributed import parallel_state as ps
    from vllm.model_executor.layers.fused_moe.config import FUSED_MOE_UNQUANTIZED_CONFIG
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import (
        TopKWeightAndReduceNoOP,
    )

    from vllm_ep_kit.backends import flashinfer_one_sided
    from vllm_ep_kit.forward import dp_forward_context
    from vllm_ep_kit.mnnvl_managers import build_manager
    from vllm_ep_kit.testing.flashinfer_emulator import FlashInferKernelEmulator

    layout = ctx.layout
    ep = ps.get_ep_group()
    ep_rank, ep_size = ep.rank_in_group, ep.world_size
    cls = reducing_twice(one_sided_class()) if reduces_twice else one_sided_class()
    shapes = {(c.num_experts, c.top_k, c.hidden, c.dtype) for c in cases}
    if len(shapes) != 1:
        raise ValueError(f"cases: one layer's steps share (experts, top_k, hidden, dtype), "
                         f"got {sorted(shapes)}")
    bound = max(max(max(case.tokens) for case in cases), 1)  # the layer's token bound
    emulator = FlashInferKernelEmulator()
    steps = []
    with emulator.installed():
        manager = build_manager(flashinfer_one_sided.NAME)
        with _manager_on_ep_group(manager):
            pf = cls(**prepare_finalize_kwargs(cls, cases[0], bound, ep_size))
            for case in cases:
                mine = source_tokens(case, layout.dp_rank(ctx.rank))
                with dp_forward_context(ctx, case.tokens, sp=False):
                    x, x_sf, _, ids, w = pf.prepare(
                        mine.x.clone(), mine.topk_weights.clone(), mine.topk_ids.clone(),
                        case.num_experts, None, False, FUSED_MOE_UNQUANTIZED_CONFIG)
                    got = Tokens(x=x, topk_ids=ids, topk_weights=w, x_scale=x_sf)
                    # received rows: [EP ranks x the step's largest DP count] (the forward
                    # context's, not the layer's bound)
                    findings = dispatch_findings(got, max(case.tokens), case, layout, ep_rank)
                    partial = moe_partial(got, case.num_experts, ep_size, ep_rank)
                    out = torch.empty(mine.x.shape, dtype=case.combine_dtype)
                    pf.finalize(out, partial.to(case.combine_dtype), mine.topk_weights,
                                mine.topk_ids, False, TopKWeightAndReduceNoOP())
                    out = late_all_reduce(out, pf.output_is_reduced(), layout.tp, ep_size)
                expected = moe_reference(mine, case.num_experts)
                tol = TOLERANCE[case.dtype]
                wrong = mismatch(out, expected, tol, tol)
                if wrong:
                    findings.append(f"output vs oracle: {wrong}")
                steps.append({"tokens": list(case.tokens), "findings": findings,
                              "scale": output_scale(out, expected)})
                ctx.heartbeat()
        manager.cleanup()
    return {"steps": steps, "output_is_reduced": pf.output_is_reduced(),
            "dispatches": emulator.dispatches, "combines": emulator.combines,
            "allocations": len(emulator.allocations)}

