"""EP correctness: dispatch + combine through each registered backend vs the oracle.

``make_plan`` validates ``check``'s arguments and decides, from the backend
registry, which backend runs on which layout with which cases;
``run_check`` starts one set of ranks per (backend, layout) and runs
``exchange.rank_cases`` in each (the transport's dispatch and combine with
the oracle's experts in between; see that module for the flow).  The CLI's
``check`` and the tests call these.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_ep_kit import backends as registry
from vllm_ep_kit.backends.spec import DP_SOURCES, Backend
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import RoutingCase
from vllm_ep_kit.reference.results import CaseResult, merge_case_rows, not_run_result

DEFAULT_TOKEN_PATTERNS = ("even", "uneven", "zero")

__all__ = [
    "CaseResult",
    "CheckArgumentError",
    "CheckPlan",
    "CheckRun",
    "backend_cases",
    "make_plan",
    "merge_case_rows",
    "plan_cases",
    "run_check",
    "token_counts",
]


def token_counts(pattern: str, num_sources: int) -> tuple[int, ...]:
    """Per-source token counts: even, uneven, or with a source holding none."""
    if pattern == "even":
        return (8,) * num_sources
    if pattern == "uneven":
        return tuple(3 + 5 * i for i in range(num_sources))
    if pattern == "zero":
        return tuple(0 if i == num_sources - 1 else 6 + i for i in range(num_sources))
    raise ValueError(f"token pattern {pattern!r}: expected one of {DEFAULT_TOKEN_PATTERNS}")


def plan_cases(
    layout: ParallelLayout,
    dtypes: tuple[str, ...],
    patterns: tuple[str, ...] = DEFAULT_TOKEN_PATTERNS,
) -> list[RoutingCase]:
    """Cases for one layout; token counts are per DP rank."""
    return [
        RoutingCase(tokens=token_counts(p, layout.dp), dtype=d, num_experts=4 * layout.ep_size)
        for d in dtypes
        for p in patterns
    ]


class CheckArgumentError(ValueError):
    """A bad ``check`` argument; the message names it."""


@dataclass(frozen=True)
class CheckRun:
    """One multi-rank start: a backend on a layout with its cases."""

    backend: str
    layout: ParallelLayout
    cases: tuple[RoutingCase, ...]
    # the registry's entry (ranks receive it: see exchange.rank_cases)
    spec: Backend = None  # type: ignore[assignment]  # None: the registry's, set in __post_init__

    def __post_init__(self) -> None:
        if self.spec is None:
            object.__setattr__(self, "spec", registry.get(self.backend))


@dataclass(frozen=True)
class CheckPlan:
    runs: tuple[CheckRun, ...]
    skipped: tuple[tuple[str, str], ...]  # (what, reason) not run
    device_backend: str  # "gloo" or "nccl"

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(run.backend for run in self.runs))


def backend_cases(
    backend: Backend, layout: ParallelLayout, dtypes: tuple[str, ...]
) -> list[RoutingCase]:
    """The cases ``backend`` runs on ``layout`` (its check dtypes only).

    Token counts are per source: DP ranks for a backend whose sources are DP
    ranks, every EP rank otherwise.
    """
    supported = tuple(d for d in dtypes if d in backend.check_dtypes)
    sources = layout.dp if backend.sources == DP_SOURCES else layout.ep_size
    return [
        RoutingCase(
            tokens=token_counts(p, sources),
            dtype=d,
            num_experts=4 * layout.ep_size,
            hidden=backend.check_hidden,
        )
        for d in supported
        for p in DEFAULT_TOKEN_PATTERNS
    ]


def validate_arguments(
    world_sizes: list[int],
    tps: list[int],
    backends: list[str] | None,
    dtypes: list[str],
    gpu_count: int,
) -> list[ParallelLayout]:
    """The layouts ``check`` would cover, or :class:`CheckArgumentError` naming the argument.

    Needs no vLLM: the command line answers a bad argument before importing it.
    """
    from vllm_ep_kit.reference.moe import DTYPES

    for name in backends or []:
        try:
            registry.canonical(name)
        except registry.UnknownBackend:
            raise CheckArgumentError(
                f"--backends: unknown backend {name!r}; expected one of "
                f"{', '.join(registry.known_names())}"
            ) from None
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise CheckArgumentError(
                f"--dtypes: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}"
            )
    for size in world_sizes:
        if size < 2:
            raise CheckArgumentError(
                f"--world-sizes: {size} is too small; all-to-all needs at least 2 ranks"
            )
        if gpu_count and size > gpu_count:
            raise CheckArgumentError(
                f"--world-sizes: {size} ranks but only {gpu_count} GPUs visible (one rank per GPU)"
            )
    layouts = []
    for size in world_sizes:
        for tp in tps:
            if tp < 1 or size % tp:
                raise CheckArgumentError(f"--tp: world size {size} is not divisible by tp={tp}")
            layouts.append(ParallelLayout.for_world(size, tp=tp))
    return layouts


def make_plan(
    world_sizes: list[int],
    tps: list[int],
    backends: list[str] | None,
    dtypes: list[str],
    gpu_count: int,
    usable: list[str],
    unusable: dict[str, str] | None = None,
) -> CheckPlan:
    """Validate ``check``'s arguments and decide what to run.

    ``unusable`` (backend -> why) lists, as not run, the checkable backends
    that the default selection leaves out on this machine.
    """
    layouts = validate_arguments(world_sizes, tps, backends, dtypes, gpu_count)
    checkable = [b.name for b in registry.all_backends() if b.check_dtypes and b.driven]
    chosen = (
        list(dict.fromkeys(registry.canonical(n) for n in backends))
        if backends
        else [b for b in usable if b in checkable]
    )
    for name in chosen:
        if name not in usable:
            why = (unusable or {}).get(name, "see `vllm-ep-kit doctor`")
            raise CheckArgumentError(f"--backends: {name} is not usable on this machine: {why}")
    runs: list[CheckRun] = []
    # the default selection says which checkable backends it left out, and why
    skipped = (
        []
        if backends
        else [
            (name, f"not usable here: {why}")
            for name, why in (unusable or {}).items()
            if name in checkable
        ]
    )
    for name in chosen:
        backend = registry.get(name)
        if name not in checkable:
            skipped.append((name, "dispatch/combine check not implemented yet"))
            continue
        unsupported = [d for d in dtypes if d not in backend.check_dtypes]
        if unsupported:
            skipped.append(
                (
                    f"{name} {','.join(unsupported)}",
                    f"payload dtype not covered by this backend's check (covers "
                    f"{', '.join(backend.check_dtypes)})",
                )
            )
        for layout in layouts:
            why = backend.applies_to(layout)
            cases = backend_cases(backend, layout, tuple(dtypes))
            if why:
                skipped.append((f"{name} {layout.describe()}", why))
            elif cases:
                runs.append(CheckRun(name, layout, tuple(cases)))
    return CheckPlan(
        runs=tuple(runs), skipped=tuple(skipped), device_backend="nccl" if gpu_count else "gloo"
    )


def run_check(
    plan: CheckPlan, *, timeout_s: float, on_result=None, on_start=None, on_error=None
) -> list[CaseResult]:
    """Run the plan; call ``on_start(backend, layout, n_cases)`` and ``on_result(result)``.
    ``timeout_s``: the ranks' watchdog limit (``run_ranks``).

    When a run's ranks fail, ``on_error(run, message)`` gets the ranks' full
    report and each of the run's cases is reported failed with the first
    failing rank's headline.  A case passes only if it passed on every rank;
    the reported error is the largest over ranks.
    """
    from vllm_ep_kit.backends.exchange import rank_cases
    from vllm_ep_kit.harness.runner import RankFailures, run_ranks

    merged_all = []
    for run in plan.runs:
        if on_start:
            on_start(run.backend, run.layout, len(run.cases))
        try:
            per_rank = run_ranks(
                rank_cases,
                run.layout.world_size,
                run.spec,
                list(run.cases),
                backend=plan.device_backend,
                layout=run.layout,
                all2all_backend=run.spec.vllm_name,
                timeout_s=timeout_s,
            )
            merged = [
                merge_case_rows(run.backend, [results[i] for results in per_rank])
                for i in range(len(run.cases))
            ]
        except RankFailures as exc:
            # One broken backend must not hide the others: every case of this run
            # fails with the ranks' first error, and the full text goes to on_error.
            if on_error:
                on_error(run, str(exc))
            merged = [
                not_run_result(
                    run.backend, run.layout.describe(), case.dtype, case.tokens, exc.summary()
                )
                for case in run.cases
            ]
        for result in merged:
            merged_all.append(result)
            if on_result:
                on_result(result)
    return merged_all
