"""EP correctness: dispatch + combine through a real vLLM all-to-all backend vs the oracle.

``plan_cases`` says what to run; ``rank_agrs_check`` runs inside each rank
(vLLM's parallel state already built by the harness) and returns one
:class:`CaseResult` per case.  The CLI's ``check`` and the tests call these.

For the all-gather/reduce-scatter backend the flow is vLLM's own: the MoE
layer's input is (in sequence-parallel layouts) chunked across TP with
``sequence_parallel_chunk``, ``AgRsAll2AllManager.dispatch`` gathers it over
the DP group (EP group under SP), each rank computes its own experts'
partial output, ``combine`` reduce-scatters it back, and the layer either
all-reduces over TP or (SP) all-gathers over TP.  The gathered tokens are
checked exactly against every source's regenerated inputs; the final output
against the fp32 reference within the dtype's tolerance.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from vllm_ep_kit.layout import ParallelLayout
from vllm_ep_kit.reference.moe import (
    RoutingCase,
    Tokens,
    concat_tokens,
    max_error,
    moe_partial,
    moe_reference,
    source_tokens,
    within_tolerance,
)

DEFAULT_TOKEN_PATTERNS = ("even", "uneven", "zero")


@dataclass
class CaseResult:
    backend: str
    layout: str
    dtype: str
    tokens: str
    dispatch_exact: bool | None  # None: not observable separately (checked via combine)
    max_error: float
    passed: bool
    seconds: float
    note: str = ""

    def as_dict(self) -> dict:
        """JSON-ready (a case that never produced an output has no error: null)."""
        data = asdict(self)
        if not math.isfinite(data["max_error"]):
            data["max_error"] = None
        return data


def token_counts(pattern: str, num_sources: int) -> tuple[int, ...]:
    """Per-source token counts: even, uneven, or with a source holding none."""
    if pattern == "even":
        return (8,) * num_sources
    if pattern == "uneven":
        return tuple(3 + 5 * i for i in range(num_sources))
    if pattern == "zero":
        return tuple(0 if i == num_sources - 1 else 6 + i for i in range(num_sources))
    raise ValueError(f"token pattern {pattern!r}: expected one of {DEFAULT_TOKEN_PATTERNS}")


def plan_cases(layout: ParallelLayout, dtypes: tuple[str, ...],
               patterns: tuple[str, ...] = DEFAULT_TOKEN_PATTERNS) -> list[RoutingCase]:
    """Cases for one layout; token counts are per DP rank."""
    return [RoutingCase(tokens=token_counts(p, layout.dp), dtype=d, num_experts=4 * layout.ep_size)
            for d in dtypes for p in patterns]


def agrs_applicable(layout: ParallelLayout) -> str:
    """Empty if vLLM uses an all-to-all here, else why the case is not applicable."""
    if not layout.uses_all2all:
        return "no all-to-all in this layout (DP=1 without sequence parallelism)"
    if layout.pcp > 1:
        return "PCP layouts are not covered yet"
    return ""


def _rank_input(case: RoutingCase, layout: ParallelLayout, rank: int, sp: bool) -> Tokens:
    """The MoE input of global ``rank``: its DP rank's tokens, TP-chunked under SP."""
    full = source_tokens(case, layout.dp_rank(rank))
    if not sp:
        return full
    tp, tp_rank = layout.tp, layout.tp_rank(rank)
    chunk = -(-full.x.shape[0] // tp)  # ceil, as vLLM's sequence_parallel_chunk pads

    def take(t: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros((chunk * tp,) + tuple(t.shape[1:]), dtype=t.dtype)
        padded[: t.shape[0]] = t
        return padded[tp_rank * chunk: (tp_rank + 1) * chunk]

    return Tokens(x=take(full.x), topk_ids=take(full.topk_ids), topk_weights=take(full.topk_weights))


def rank_agrs_check(ctx, cases: list[RoutingCase]) -> list[CaseResult]:
    """Run every case through vLLM's ``AgRsAll2AllManager`` on this rank."""
    from vllm.distributed import parallel_state as ps

    from vllm_ep_kit.agrs_plumbing import (
        agrs_manager,
        dp_forward_context,
        gather_sp_chunks,
        reduce_tp_partials,
    )

    layout: ParallelLayout = ctx.layout
    manager, sp = agrs_manager(ctx)
    ep = ps.get_ep_group()
    comm = ep if sp else ps.get_dp_group()
    dev = ctx.device
    results = []
    for case in cases:
        start = time.perf_counter()
        mine = _rank_input(case, layout, ctx.rank, sp)
        full = source_tokens(case, layout.dp_rank(ctx.rank))
        if sp:  # vLLM's own chunking must agree with the oracle's
            # Imported only here: vLLM's models package queries compiled ops at import
            # time, which a GPU host running vLLM's Python sources alone does not have.
            from vllm.model_executor.models.utils import sequence_parallel_chunk_impl

            chunked = sequence_parallel_chunk_impl(full.x.to(dev))
            assert torch.equal(chunked.cpu(), mine.x), "sequence_parallel_chunk disagrees"
        with dp_forward_context(ctx, case.tokens, sp):
            gx, gw, gids = manager.dispatch(mine.x.to(dev), mine.topk_weights.to(dev),
                                            mine.topk_ids.to(dev), is_sequence_parallel=sp)
            expected = concat_tokens([_rank_input(case, layout, g, sp) for g in comm.ranks])
            exact = (torch.equal(gx.cpu(), expected.x)
                     and torch.equal(gids.cpu(), expected.topk_ids)
                     and torch.equal(gw.cpu(), expected.topk_weights))
            received = Tokens(x=gx.cpu(), topk_ids=gids.cpu(), topk_weights=gw.cpu())
            partial = moe_partial(received, case.num_experts, layout.ep_size,
                                  ep.rank_in_group).to(case.torch_dtype)
            out = manager.combine(partial.to(dev), is_sequence_parallel=sp)
        out = gather_sp_chunks(out, full.x.shape[0]) if sp else \
            reduce_tp_partials(out, layout.tp)
        want = moe_reference(full, case.num_experts)
        err = max_error(out.cpu(), want)
        ok = exact and within_tolerance(out.cpu(), want, case.dtype)
        results.append(CaseResult(
            backend="allgather_reducescatter", layout=layout.describe(), dtype=case.dtype,
            tokens=str(list(case.tokens)), dispatch_exact=exact, max_error=err, passed=ok,
            seconds=time.perf_counter() - start))
        ctx.heartbeat()
    return results


# ----------------------------------------------------------------- the check command

# Payload dtypes each checkable backend's check covers.  AGRS moves hidden states
# through vLLM's dispatch, which has no scale tensor: fp8 + scales is checked on
# the FlashInfer backends, which carry scales as a second payload.  vLLM's one-sided
# manager sizes its combine region for bf16 outputs, so fp16/fp32 do not apply there.
CHECKABLE_BACKENDS = {
    "allgather_reducescatter": ("bf16", "fp16", "fp32"),
    "flashinfer_nvlink_two_sided": ("bf16", "fp16", "fp32", "fp8"),
    "flashinfer_nvlink_one_sided": ("bf16", "fp8"),
}
FLASHINFER_HIDDEN = 512  # fp8 scale rows must be 16-byte aligned: hidden % 512 == 0


class CheckArgumentError(ValueError):
    """A bad ``check`` argument; the message names it."""


@dataclass(frozen=True)
class CheckRun:
    """One multi-rank start: a backend on a layout with its cases."""

    backend: str
    layout: ParallelLayout
    cases: tuple[RoutingCase, ...]


@dataclass(frozen=True)
class CheckPlan:
    runs: tuple[CheckRun, ...]
    skipped: tuple[tuple[str, str], ...]  # (what, reason) not run
    device_backend: str  # "gloo" or "nccl"

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(run.backend for run in self.runs))


def backend_cases(backend: str, layout: ParallelLayout,
                  dtypes: tuple[str, ...]) -> list[RoutingCase]:
    """The cases ``backend`` runs on ``layout`` (its supported dtypes only)."""
    supported = [d for d in dtypes if d in CHECKABLE_BACKENDS[backend]]
    if backend == "allgather_reducescatter":
        return plan_cases(layout, tuple(supported))
    # FlashInfer: every EP rank is a source of its own tokens.
    return [RoutingCase(tokens=token_counts(p, layout.ep_size), dtype=d,
                        num_experts=4 * layout.ep_size, hidden=FLASHINFER_HIDDEN)
            for d in supported for p in DEFAULT_TOKEN_PATTERNS]


def applicable(backend: str, layout: ParallelLayout) -> str:
    """Empty if ``backend`` has an all-to-all to check on ``layout``, else why not."""
    if backend == "allgather_reducescatter":
        return agrs_applicable(layout)
    if layout.ep_size < 2:
        return "EP group of one rank: nothing to exchange"
    return ""


def make_plan(world_sizes: list[int], tps: list[int], backends: list[str] | None,
              dtypes: list[str], gpu_count: int, usable: list[str],
              unusable: dict[str, str] | None = None) -> CheckPlan:
    """Validate ``check``'s arguments and decide what to run.

    ``unusable`` (backend -> why) lists, as not run, the checkable backends
    that the default selection leaves out on this machine.
    """
    from vllm_ep_kit.backends import BACKENDS
    from vllm_ep_kit.reference.moe import DTYPES

    known = [b.name for b in BACKENDS]
    for name in backends or []:
        if name not in known:
            raise CheckArgumentError(f"--backends: unknown backend {name!r}; expected one of "
                                     f"{', '.join(known)}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise CheckArgumentError(f"--dtypes: unknown dtype {dtype!r}; expected one of "
                                     f"{', '.join(DTYPES)}")
    for size in world_sizes:
        if size < 2:
            raise CheckArgumentError(f"--world-sizes: {size} is too small; all-to-all needs "
                                     "at least 2 ranks")
        if gpu_count and size > gpu_count:
            raise CheckArgumentError(f"--world-sizes: {size} ranks but only {gpu_count} GPUs "
                                     "visible (one rank per GPU)")
    layouts = []
    for size in world_sizes:
        for tp in tps:
            if tp < 1 or size % tp:
                raise CheckArgumentError(f"--tp: world size {size} is not divisible by tp={tp}")
            layouts.append(ParallelLayout.for_world(size, tp=tp))
    chosen = list(backends) if backends else [b for b in usable if b in CHECKABLE_BACKENDS]
    for name in chosen:
        if name not in usable:
            raise CheckArgumentError(f"--backends: {name} is not usable on this machine "
                                     "(see `vllm-ep-kit doctor`)")
    runs, skipped = [], []
    if not backends:
        skipped += [(name, f"not usable here: {why}") for name, why in (unusable or {}).items()
                    if name in CHECKABLE_BACKENDS]
    for name in chosen:
        if name not in CHECKABLE_BACKENDS:
            skipped.append((name, "dispatch/combine check not implemented yet"))
            continue
        unsupported = [d for d in dtypes if d not in CHECKABLE_BACKENDS[name]]
        if unsupported:
            skipped.append((f"{name} {','.join(unsupported)}",
                            f"payload dtype not covered by this backend's check (covers "
                            f"{', '.join(CHECKABLE_BACKENDS[name])})"))
        for layout in layouts:
            why = applicable(name, layout)
            cases = backend_cases(name, layout, tuple(dtypes))
            if why:
                skipped.append((f"{name} {layout.describe()}", why))
            elif cases:
                runs.append(CheckRun(name, layout, tuple(cases)))
    return CheckPlan(runs=tuple(runs), skipped=tuple(skipped),
                     device_backend="nccl" if gpu_count else "gloo")


def failure_summary(exc) -> str:
    """The first failing rank's line of a ``RankFailures`` message."""
    for line in str(exc).splitlines():
        if line.startswith("--- rank"):
            return line.strip("- ")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def merge_case_rows(backend: str, rows: list[CaseResult]) -> CaseResult:
    """One case as every rank saw it: it passes only if it passed on every rank; the error
    is the largest and the note the first failing rank's."""
    failing = [r for r in rows if not r.passed]
    return CaseResult(
        backend=backend, layout=rows[0].layout, dtype=rows[0].dtype, tokens=rows[0].tokens,
        dispatch_exact=None if rows[0].dispatch_exact is None
        else all(r.dispatch_exact for r in rows),
        max_error=max(r.max_error for r in rows), passed=not failing,
        seconds=max(r.seconds for r in rows), note=(failing or rows)[0].note)


def run_check(plan: CheckPlan, on_result=None, on_start=None, on_error=None,
              timeout_s: float = 300.0) -> list[CaseResult]:
    """Run the plan; call ``on_start(backend, layout, n_cases)`` and ``on_result(result)``.

    When a run's ranks fail, ``on_error(run, message)`` gets the ranks' full
    report and each of the run's cases is reported failed with its first line.

    A case passes only if it passed on every rank; the reported error is the
    largest over ranks.
    """
    from vllm_ep_kit.testing import RankFailures, run_ranks

    merged_all = []
    for run in plan.runs:
        if on_start:
            on_start(run.backend, run.layout, len(run.cases))
        if run.backend == "allgather_reducescatter":
            fn, args = rank_agrs_check, (list(run.cases),)
        else:
            from vllm_ep_kit.manager_roundtrip import rank_manager_roundtrip
            from vllm_ep_kit.mnnvl_managers import kind_of_backend

            fn, args = rank_manager_roundtrip, (kind_of_backend(run.backend), list(run.cases))
        try:
            per_rank = run_ranks(fn, run.layout.world_size, *args, backend=plan.device_backend,
                                 layout=run.layout, all2all_backend=run.backend,
                                 timeout_s=timeout_s)
        except RankFailures as exc:
            # One broken backend must not hide the others: every case of this run
            # fails with the ranks' first error, and the full text goes to on_error.
            if on_error:
                on_error(run, str(exc))
            why = failure_summary(exc)
            for case in run.cases:
                merged = CaseResult(backend=run.backend, layout=run.layout.describe(),
                                    dtype=case.dtype, tokens=str(list(case.tokens)),
                                    dispatch_exact=None, max_error=float("nan"),
                                    passed=False, seconds=0.0, note=why)
                merged_all.append(merged)
                if on_result:
                    on_result(merged)
            continue
        for i in range(len(run.cases)):
            merged = merge_case_rows(run.backend, [results[i] for results in per_rank])
            merged_all.append(merged)
            if on_result:
                on_result(merged)
    return merged_all
