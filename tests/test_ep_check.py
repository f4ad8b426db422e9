"""What ``check`` decides: which backends run on which layouts with which cases, which
arguments it refuses (by name), and how the ranks' verdicts on a case merge (one rank's
failure fails the case; ranks that fail fail every case of their run)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from vllm_ep_kit import backends as registry
from vllm_ep_kit.commands.check import (
    DEFAULT_TOKEN_PATTERNS,
    CaseResult,
    CheckArgumentError,
    CheckPlan,
    CheckRun,
    backend_cases,
    make_plan,
    merge_case_rows,
    plan_cases,
    run_check,
    token_counts,
    validate_arguments,
)
from vllm_ep_kit.harness.skips import NotRunnableHere
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import RoutingCase


def row(passed: bool, error: float, note: str = "", exact: bool | None = True) -> CaseResult:
    return CaseResult(
        backend="naive",
        layout="tp=1 dp=2",
        dtype="bf16",
        tokens="[4, 0]",
        dispatch_exact=exact,
        max_error=error,
        passed=passed,
        seconds=0.01,
        note=note,
    )


@pytest.mark.parametrize("failing_rank", [0, 1, 3])
def test_a_case_fails_when_any_rank_failed_it(failing_rank):
    """Any one failing rank fails the case, whichever it is (a merge of rank 0's
    verdict alone would pass here)."""
    rows = [row(True, 1e-3) for _ in range(4)]
    rows[failing_rank] = row(False, 0.5, note=f"rank {failing_rank}: combine off", exact=False)
    merged = merge_case_rows("naive", rows)
    assert not merged.passed
    assert merged.max_error == 0.5
    assert merged.dispatch_exact is False
    assert merged.note == f"rank {failing_rank}: combine off"


def test_a_case_passes_when_every_rank_passed_it():
    merged = merge_case_rows("naive", [row(True, 1e-3), row(True, 4e-3)])
    assert merged.passed and merged.max_error == 4e-3 and merged.dispatch_exact


# --- what check plans: arguments, backends, layouts, cases ---------------------------------

AGRS, ONE, TWO = (
    "allgather_reducescatter",
    "flashinfer_nvlink_one_sided",
    "flashinfer_nvlink_two_sided",
)


@pytest.mark.parametrize(
    ("pattern", "sources", "counts"),
    [
        ("even", 2, (8, 8)),
        ("uneven", 3, (3, 8, 13)),
        ("zero", 2, (6, 0)),
        ("zero", 4, (6, 7, 8, 0)),
    ],
)
def test_token_patterns_give_each_source_its_count(pattern, sources, counts):
    assert token_counts(pattern, sources) == counts


def test_an_unknown_token_pattern_is_named():
    with pytest.raises(ValueError, match=re.escape("token pattern 'odd': expected one of")):
        token_counts("odd", 2)


@pytest.mark.parametrize(("world", "tp", "experts"), [(4, 2, 16), (2, 1, 8), (8, 1, 32)])
def test_plan_cases_cover_every_dtype_and_pattern_with_four_experts_per_rank(world, tp, experts):
    layout = ParallelLayout.for_world(world, tp=tp)
    cases = plan_cases(layout, ("bf16", "fp16"))
    assert [(c.dtype, c.tokens) for c in cases] == [
        (d, token_counts(p, layout.dp)) for d in ("bf16", "fp16") for p in DEFAULT_TOKEN_PATTERNS
    ]
    assert {c.num_experts for c in cases} == {experts}


def validate(**changes):
    arguments = {
        "world_sizes": [2, 4],
        "tps": [1],
        "backends": None,
        "dtypes": ["bf16"],
        "gpu_count": 0,
    }
    return validate_arguments(**{**arguments, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backends": ["nope"]}, "--backends: unknown backend 'nope'; expected one of "),
        ({"dtypes": ["int4"]}, "--dtypes: unknown dtype 'int4'; expected one of bf16, fp16"),
        ({"world_sizes": [1]}, "--world-sizes: 1 is too small; all-to-all needs at least 2"),
        (
            {"world_sizes": [2, 4], "gpu_count": 2},
            "--world-sizes: 4 ranks but only 2 GPUs visible (one rank per GPU)",
        ),
        ({"tps": [0]}, "--tp: world size 2 is not divisible by tp=0"),
        ({"world_sizes": [4], "tps": [3]}, "--tp: world size 4 is not divisible by tp=3"),
    ],
)
def test_a_bad_check_argument_is_answered_by_name(changes, message):
    with pytest.raises(CheckArgumentError, match=re.escape(message)):
        validate(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"world_sizes": [2]},  # the smallest world
        {"world_sizes": [2], "gpu_count": 2},  # as many ranks as GPUs
        {"world_sizes": [8], "gpu_count": 0},  # CPU: gloo ranks, no GPU bound
        {"backends": ["naive", TWO]},  # an alias vLLM accepts
        {"dtypes": ["bf16", "fp16", "fp32", "fp8"]},
    ],
)
def test_arguments_on_the_right_side_of_each_bound_are_taken(changes):
    assert validate(**changes)


def test_the_layouts_are_every_world_size_with_every_tp_in_order():
    layouts = validate(world_sizes=[2, 4], tps=[1, 2])
    assert [(lay.world_size, lay.tp) for lay in layouts] == [(2, 1), (2, 2), (4, 1), (4, 2)]


def plan(**changes):
    arguments = {
        "world_sizes": [2],
        "tps": [1],
        "backends": None,
        "dtypes": ["bf16"],
        "gpu_count": 0,
        "usable": [AGRS, ONE, TWO, "deepep_low_latency"],
        "unusable": None,
    }
    return make_plan(**{**arguments, **changes})


def test_by_default_every_usable_checkable_backend_runs():
    made = plan(usable=[TWO, AGRS, "deepep_low_latency"])
    assert made.backends == (TWO, AGRS)  # deepep: usable, but check does not drive it
    assert made.skipped == () and made.device_backend == "gloo"


def test_by_default_unusable_checkable_backends_are_listed_as_not_run_with_why():
    made = plan(usable=[AGRS], unusable={ONE: "needs NVLink", "deepep_low_latency": "no deep_ep"})
    assert made.backends == (AGRS,)
    assert made.skipped == ((ONE, "not usable here: needs NVLink"),)


def test_named_backends_run_once_each_and_unusable_ones_are_not_listed():
    made = plan(backends=["naive", AGRS], unusable={ONE: "needs NVLink"})
    assert made.backends == (AGRS,) and made.skipped == ()


def test_a_named_backend_that_is_not_usable_here_is_an_argument_error():
    with pytest.raises(CheckArgumentError, match=re.escape(f"--backends: {ONE} is not usable")):
        plan(backends=[ONE], usable=[AGRS])


def test_a_named_backend_check_does_not_drive_is_listed_as_not_run():
    made = plan(backends=["deepep_low_latency"])
    assert made.runs == ()
    assert made.skipped == (("deepep_low_latency", "dispatch/combine check not implemented yet"),)


def test_dtypes_a_backend_does_not_move_are_listed_and_the_rest_run():
    made = plan(backends=[ONE], dtypes=["bf16", "fp16", "fp32"])
    assert made.skipped == (
        (
            f"{ONE} fp16,fp32",
            "payload dtype not covered by this backend's check (covers bf16, fp8)",
        ),
    )
    (run,) = made.runs
    assert {case.dtype for case in run.cases} == {"bf16"}


def test_a_backend_moving_none_of_the_dtypes_has_no_run():
    made = plan(backends=[ONE], dtypes=["fp32"])
    assert made.runs == () and len(made.skipped) == 1


def test_cases_count_tokens_per_source_of_the_backend():
    made = plan(backends=[AGRS, TWO], world_sizes=[4], tps=[2])
    by_backend = {run.backend: run for run in made.runs}
    layout = ParallelLayout.for_world(4, tp=2)
    agrs, two = by_backend[AGRS], by_backend[TWO]
    assert [c.tokens for c in agrs.cases] == [token_counts(p, 2) for p in DEFAULT_TOKEN_PATTERNS]
    assert [c.tokens for c in two.cases] == [token_counts(p, 4) for p in DEFAULT_TOKEN_PATTERNS]
    assert {c.hidden for c in two.cases} == {registry.get(TWO).check_hidden}
    assert {c.num_experts for c in agrs.cases + two.cases} == {16}
    assert agrs.layout == layout and agrs.spec is registry.get(AGRS)


def test_a_layout_a_backend_refuses_is_listed_as_not_run_and_the_others_run(monkeypatch):
    def refuses_wide(layout):
        return "only on 2 ranks" if layout.world_size > 2 else ""

    spec = dataclasses.replace(
        registry.get(AGRS), name="plugin_agrs", aliases=(), applies_to=refuses_wide
    )
    registry.register(spec)
    try:
        made = plan(backends=["plugin_agrs"], usable=["plugin_agrs"], world_sizes=[2, 4])
    finally:
        registry.unregister("plugin_agrs")
    assert [run.layout.world_size for run in made.runs] == [2]
    assert made.skipped == (("plugin_agrs tp=1,dp=4,ep=4", "only on 2 ranks"),)


def test_a_run_takes_the_registry_entry_of_its_backend_unless_given_one():
    layout = ParallelLayout.for_world(2, tp=1)
    assert CheckRun(AGRS, layout, ()).spec is registry.get(AGRS)
    given = dataclasses.replace(registry.get(AGRS), check_hidden=64)
    assert CheckRun(AGRS, layout, (), given).spec is given


@pytest.mark.parametrize("layout", [ParallelLayout.for_world(4, tp=2), ParallelLayout(tp=1, dp=2)])
def test_backend_cases_are_its_check_dtypes_by_pattern_sized_by_its_sources(layout):
    one, agrs = registry.get(ONE), registry.get(AGRS)
    dtypes = ("fp32", "fp8", "bf16")  # fp32: not a dtype the one-sided kernel's check covers
    cases = backend_cases(one, layout, dtypes)
    assert [(c.dtype, c.tokens) for c in cases] == [
        (d, token_counts(p, layout.ep_size))
        for d in ("fp8", "bf16")
        for p in DEFAULT_TOKEN_PATTERNS
    ]
    assert {(c.num_experts, c.hidden) for c in cases} == {(4 * layout.ep_size, one.check_hidden)}
    by_dp = backend_cases(agrs, layout, ("bf16",))
    assert [c.tokens for c in by_dp] == [token_counts(p, layout.dp) for p in DEFAULT_TOKEN_PATTERNS]
    assert {(c.num_experts, c.hidden) for c in by_dp} == {(4 * layout.ep_size, agrs.check_hidden)}


def test_make_plan_refuses_what_validation_refuses():
    with pytest.raises(CheckArgumentError, match="--world-sizes: 4 ranks but only 2 GPUs"):
        plan(world_sizes=[2, 4], gpu_count=2)
    with pytest.raises(CheckArgumentError, match="--backends: unknown backend 'nope'"):
        plan(backends=["nope"])


def test_an_unknown_backend_is_answered_with_every_known_name():
    with pytest.raises(CheckArgumentError) as raised:
        validate(backends=["nope"])
    names = str(raised.value).split("expected one of ", 1)[1].split(", ")
    assert names == list(registry.known_names()) and len(names) > 2


@pytest.mark.parametrize(
    "changes",
    [{"transport": None}, {"check_dtypes": ()}],
    ids=["not driven by the kit", "no check dtypes"],
)
def test_a_backend_check_cannot_drive_is_not_run_and_does_not_stop_the_next(changes):
    spec = dataclasses.replace(registry.get(AGRS), name="plugin_partial", aliases=(), **changes)
    registry.register(spec)
    try:
        usable = ["plugin_partial", AGRS]
        default = plan(usable=usable, unusable={"plugin_partial": "never"})
        named = plan(backends=["plugin_partial", AGRS], usable=usable)
    finally:
        registry.unregister("plugin_partial")
    assert default.backends == (AGRS,) and default.skipped == ()
    assert named.backends == (AGRS,)
    assert named.skipped == (("plugin_partial", "dispatch/combine check not implemented yet"),)


def test_ranks_on_gpus_exchange_over_nccl():
    assert plan(world_sizes=[2], gpu_count=2).device_backend == "nccl"


def agrs_plan() -> CheckPlan:
    """AGRS on two gloo ranks with three cases, written out: the run tests start ranks, so
    they read no planning code (a mutation run would start ranks for each of its mutants)."""
    cases = tuple(
        RoutingCase(tokens=t, dtype="bf16", num_experts=8) for t in [(8, 8), (3, 8), (6, 0)]
    )
    return CheckPlan(
        runs=(CheckRun(AGRS, ParallelLayout(tp=1, dp=2), cases, registry.get(AGRS)),),
        skipped=(),
        device_backend="gloo",
    )


class RefusesToOpen:
    """A transport whose every rank fails as it opens (ranks import it from this module)."""

    def __init__(self, ctx, backend):
        raise RuntimeError(f"rank {ctx.rank}: this transport refuses to open")


def agrs_plan_with(transport, vllm_name: str = AGRS) -> CheckPlan:
    """``agrs_plan()`` with its run's transport (and the vLLM name it runs under) replaced."""
    planned = agrs_plan()
    spec = dataclasses.replace(registry.get(AGRS), transport=transport, vllm_name=vllm_name)
    return dataclasses.replace(planned, runs=(dataclasses.replace(planned.runs[0], spec=spec),))


def test_a_run_whose_ranks_fail_fails_each_of_its_cases_with_the_first_error():
    """Every rank fails: every case is reported failed, on_error gets the ranks' report."""
    made = agrs_plan_with(RefusesToOpen)
    events = []
    results = run_check(
        made,
        on_result=lambda r: events.append(("result", r.passed)),
        on_start=lambda backend, layout, n: events.append(("start", backend, layout, n)),
        on_error=lambda run, message: events.append(("error", run.backend, message)),
        timeout_s=120,
    )
    assert events[0] == ("start", AGRS, made.runs[0].layout, 3)
    assert events[1][:2] == ("error", AGRS) and "2 of 2 ranks failed" in events[1][2]
    assert events[2:] == [("result", False)] * 3
    assert [(r.backend, r.layout, r.dtype, r.tokens) for r in results] == [
        (AGRS, "tp=1,dp=2,ep=2", "bf16", str(list(c.tokens))) for c in made.runs[0].cases
    ]
    # each case carries the first failing rank's headline, which the full report holds too
    (note,) = {r.note for r in results}
    assert not any(r.passed for r in results) and re.match(r"rank \d: ", note)
    assert "this transport refuses to open" in note
    assert note.split(": ", 1)[1][:40] in events[1][2]


@pytest.mark.vllm
def test_a_run_whose_ranks_pass_reports_each_case_as_every_rank_saw_it():
    """vLLM's AGRS manager on two gloo ranks: each case once, merged over the ranks, in the
    plan's order, announced with its backend, layout and number of cases."""
    made = agrs_plan()
    (run,) = made.runs
    events = []
    results = run_check(
        made,
        on_result=lambda r: events.append(("result", r.tokens, r.passed)),
        on_start=lambda backend, layout, n: events.append(("start", backend, layout, n)),
        on_error=lambda run, message: events.append(("error", message)),
        timeout_s=240,
    )
    expected = [(AGRS, "tp=1,dp=2,ep=2", "bf16", str(list(c.tokens))) for c in run.cases]
    assert [(r.backend, r.layout, r.dtype, r.tokens) for r in results] == expected
    assert all(r.passed and r.dispatch_exact for r in results), [r.as_dict() for r in results]
    assert events == [("start", AGRS, run.layout, 3)] + [
        ("result", tokens, True) for *_, tokens in expected
    ]


def test_a_run_hands_the_harness_its_plan_and_merges_what_the_ranks_return(monkeypatch):
    """What run_check gives run_ranks (the rank function, the world, the backend spec and
    cases, the plan's process group, the layout, the vLLM all-to-all name, the watchdog
    limit) and how it merges the rows that come back, read in this process: rank 1 fails
    the second case.  The runs below start real ranks for the same; this one is what a
    mutation run can afford for every mutant."""
    from vllm_ep_kit.backends.exchange import rank_cases
    from vllm_ep_kit.harness import runner

    calls = []

    def recorded_run_ranks(fn, world_size, *args, **kwargs):
        calls.append((fn, world_size, args, kwargs))
        _, cases = args
        return [
            [
                row(not (rank == 1 and i == 1), 0.25 * (rank + 1) + i, note=f"rank {rank}")
                for i in range(len(cases))
            ]
            for rank in range(world_size)
        ]

    monkeypatch.setattr(runner, "run_ranks", recorded_run_ranks)
    made = dataclasses.replace(
        agrs_plan_with(RefusesToOpen, vllm_name="flashinfer_nvlink_two_sided"),
        device_backend="nccl",
    )
    (run,) = made.runs
    results = run_check(made, timeout_s=37)
    assert calls == [
        (
            rank_cases,
            2,
            (run.spec, list(run.cases)),
            {
                "backend": "nccl",
                "layout": run.layout,
                "all2all_backend": "flashinfer_nvlink_two_sided",
                "timeout_s": 37,
            },
        )
    ]
    assert [(r.backend, r.passed, r.max_error, r.note) for r in results] == [
        (AGRS, True, 0.5, "rank 0"),
        (AGRS, False, 1.5, "rank 1"),
        (AGRS, True, 2.5, "rank 0"),
    ]


def test_a_run_whose_ranks_fail_fails_its_cases_and_the_next_run_still_runs(monkeypatch):
    """The first run's ranks fail (rank 1 exits with code 3): each of its cases is reported
    failed, not run, with that rank's headline, and on_error gets the ranks' whole report;
    the second run (another backend, another layout) runs and reports as usual.  Every
    callback gets what it names, in the plan's order, in this process."""
    from vllm_ep_kit.harness import RankFailures, RankReport, runner

    failing = RankFailures("2 of 2 ranks failed\n(the whole report)", [RankReport(1, 3)])

    def recorded_run_ranks(fn, world_size, spec, cases, **kwargs):
        if kwargs["layout"] == first.layout:
            raise failing
        return [[row(True, 0.5, note="fine") for _ in cases] for _ in range(world_size)]

    monkeypatch.setattr(runner, "run_ranks", recorded_run_ranks)
    made = agrs_plan()
    (first,) = made.runs
    second = dataclasses.replace(first, backend="second", layout=ParallelLayout(tp=2, dp=1))
    assert second.layout.describe() != first.layout.describe()
    events = []
    results = run_check(
        dataclasses.replace(made, runs=(first, second)),
        timeout_s=60,
        on_start=lambda backend, layout, n: events.append(("start", backend, layout, n)),
        on_error=lambda run, message: events.append(("error", run, message)),
        on_result=lambda result: events.append(("result", result)),
    )
    headline = failing.summary()
    assert headline.startswith("rank 1: ")
    tokens = [str(list(case.tokens)) for case in first.cases]
    assert [(r.backend, r.layout, r.dtype, r.tokens, r.passed, r.note) for r in results] == [
        (AGRS, first.layout.describe(), "bf16", t, False, headline) for t in tokens
    ] + [("second", "tp=1 dp=2", "bf16", "[4, 0]", True, "fine")] * 3
    assert events == [
        ("start", AGRS, first.layout, 3),
        ("error", first, str(failing)),
        *(("result", r) for r in results[:3]),
        ("start", "second", second.layout, 3),
        *(("result", r) for r in results[3:]),
    ]


class NamesWhatItWasGiven:
    """A transport that fails as it opens, naming the process group's backend and the
    all-to-all backend vLLM was configured with (ranks import it from this module)."""

    def __init__(self, ctx, backend):
        import torch.distributed as dist

        configured = ctx.vllm_config.parallel_config.all2all_backend
        raise RuntimeError(f"process group {dist.get_backend()}, vLLM all2all {configured}")


class SleepsPastItsLimit:
    """A transport that opens for longer than the watchdog allows without progress."""

    def __init__(self, ctx, backend):
        import time

        time.sleep(30)
        raise RuntimeError("no watchdog stopped this rank")


def run_with(transport, vllm_name: str = AGRS, timeout_s: float = 120) -> list:
    """The cases' notes of ``agrs_plan_with(transport, vllm_name)`` run under ``timeout_s``."""
    return [r.note for r in run_check(agrs_plan_with(transport, vllm_name), timeout_s=timeout_s)]


@pytest.mark.vllm
def test_a_run_gets_the_plans_process_group_and_its_backends_vllm_name(monkeypatch):
    """The plan's process-group backend, not the host's default (pretended NCCL here), and
    vLLM configured with the run's own all-to-all backend, not vLLM's default."""
    from vllm_ep_kit.harness import runner

    monkeypatch.setattr(runner, "default_backend", lambda: "nccl")
    try:
        notes = run_with(NamesWhatItWasGiven, vllm_name="flashinfer_nvlink_two_sided")
    except NotRunnableHere as exc:  # NCCL on a host without GPUs cannot run here
        pytest.fail(f"the run asked for the host's default process group: {exc}")
    assert len(notes) == 3
    for note in notes:
        assert "process group gloo, vLLM all2all flashinfer_nvlink_two_sided" in note, note


@pytest.mark.vllm
def test_a_run_gets_the_watchdog_limit_check_was_given():
    notes = run_with(SleepsPastItsLimit, timeout_s=3)
    assert len(notes) == 3
    for note in notes:
        assert "no progress for 3 s" in note, note


def test_a_named_backend_not_usable_here_is_refused_with_the_reason():
    why = "Python module 'deep_ep' not installed"
    with pytest.raises(CheckArgumentError) as raised:
        plan(backends=["deepep_v2"], usable=[AGRS], unusable={"deepep_v2": why})
    assert str(raised.value) == f"--backends: deepep_v2 is not usable on this machine: {why}"
    with pytest.raises(CheckArgumentError, match=r"machine: see `vllm-ep-kit doctor`$"):
        plan(backends=["deepep_v2"], usable=[AGRS], unusable={})
