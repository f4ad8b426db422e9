"""Each command's exit status from its result: a failure of one kind among many passing
results fails the command, each kind on its own (a command that prints a failure and
exits 0 is the worst bug a CI tool can have)."""

from __future__ import annotations

import pytest

from vllm_ep_kit.commands import exit_codes
from vllm_ep_kit.commands.bench.report import CHECK_TOLERANCE, merge_point
from vllm_ep_kit.lint.area import Finding
from vllm_ep_kit.reference.results import CaseResult

from .bench.conftest import AGRS, TWO, rank_row


def case(passed: bool, backend: str = AGRS) -> CaseResult:
    return CaseResult(
        backend=backend,
        layout="tp=1,dp=2,ep=2",
        dtype="bf16",
        tokens="[8, 8]",
        dispatch_exact=True if passed else None,
        max_error=0.0 if passed else 0.5,
        passed=passed,
        seconds=0.01,
    )


def test_check_passes_when_every_case_passed():
    assert exit_codes.check([case(True), case(True, TWO)]) == exit_codes.PASSED == 0


@pytest.mark.parametrize("failing", [0, 2, 4])
def test_check_fails_when_one_case_of_many_failed(failing):
    results = [case(i != failing) for i in range(5)]
    assert exit_codes.check(results) == exit_codes.FAILED == 1


def point(error: float | None) -> dict:
    """A merged bench point whose round-trip check saw ``error`` (None: not checked)."""
    return merge_point([rank_row(0, error=error), rank_row(1, error=error)], None)


def bench_report(errors: list[float | None], failures: list[dict] | None = None) -> dict:
    return {"results": [point(e) for e in errors], "failures": failures or []}


def failure() -> dict:
    return {"backend": TWO, "points_measured": 1, "points_planned": 4, "error": "rank 1: died"}


@pytest.mark.parametrize(
    "errors",
    [[0.0, CHECK_TOLERANCE], [None, 0.0], []],
    ids=["checked, the largest at the tolerance", "one point not checked", "no point"],
)
def test_bench_passes_when_no_point_failed_and_no_run_failed(errors):
    report = bench_report(errors)
    assert exit_codes.failed_points(report) == []
    assert exit_codes.bench(report) == exit_codes.PASSED


@pytest.mark.parametrize("failing", [0, 2])
def test_bench_fails_when_one_point_of_many_failed_its_check(failing):
    errors = [CHECK_TOLERANCE * 4 if i == failing else 0.0 for i in range(3)]
    report = bench_report(errors)
    assert exit_codes.failed_points(report) == [report["results"][failing]]
    assert exit_codes.bench(report) == exit_codes.FAILED


def test_bench_fails_when_a_run_failed_though_every_measured_point_passed():
    report = bench_report([0.0, 0.0], failures=[failure()])
    assert exit_codes.failed_points(report) == []
    assert exit_codes.bench(report) == exit_codes.FAILED


def test_bench_fails_when_both_kinds_failed():
    report = bench_report([CHECK_TOLERANCE * 4], failures=[failure()])
    assert exit_codes.bench(report) == exit_codes.FAILED


def test_lint_ci_fails_on_one_finding_and_passes_on_none():
    finding = Finding(".buildkite/test_areas/x.yaml", 3, "unique-labels", "label used twice")
    assert exit_codes.lint_ci([]) == exit_codes.PASSED
    assert exit_codes.lint_ci([finding]) == exit_codes.FAILED


@pytest.mark.parametrize(
    ("wheel_failures", "status"),
    [({}, exit_codes.PASSED), ({"deep_ep": "no wheel for cp312"}, exit_codes.FAILED)],
)
def test_bundle_fails_when_a_wheel_is_missing(wheel_failures, status):
    assert exit_codes.bundle({"wheel_failures": wheel_failures}) == status


def test_the_statuses_are_distinct():
    statuses = [
        exit_codes.PASSED,
        exit_codes.FAILED,
        exit_codes.BAD_ARGUMENT,
        exit_codes.INTERNAL_ERROR,
    ]
    assert statuses == [0, 1, 2, 3]


def preflight_report(*verdicts: str) -> dict:
    return {"checks": [{"name": f"check {i}", "verdict": v} for i, v in enumerate(verdicts)]}


def test_preflight_passes_when_nothing_will_fail():
    assert exit_codes.preflight(preflight_report("ok", "ok")) == exit_codes.PASSED
    assert exit_codes.preflight(preflight_report()) == exit_codes.PASSED


def test_preflight_passes_when_a_check_is_only_risky():
    assert exit_codes.preflight(preflight_report("ok", "risky", "risky")) == exit_codes.PASSED


@pytest.mark.parametrize("failing", [0, 1, 3])
def test_preflight_fails_when_one_check_of_many_will_fail(failing):
    verdicts = ["ok", "risky", "ok", "ok"]
    verdicts[failing] = "will fail"
    assert exit_codes.preflight(preflight_report(*verdicts)) == exit_codes.FAILED


def export_report(*statuses: str) -> dict:
    return {"rows": [{"patch": f"p{i}", "status": s} for i, s in enumerate(statuses)]}


def test_patches_export_passes_when_every_fix_is_written_or_not_needed():
    report = export_report("needed and written", "not needed", "needed (diff printed)")
    assert exit_codes.patches_export(report) == exit_codes.PASSED
    assert exit_codes.patches_export(export_report()) == exit_codes.PASSED


@pytest.mark.parametrize("bad", ["cannot apply", "needed"])
@pytest.mark.parametrize("where", [0, 2])
def test_patches_export_fails_on_one_fix_left_undone(bad, where):
    statuses = ["not needed", "needed and written", "not needed"]
    statuses[where] = bad
    assert exit_codes.patches_export(export_report(*statuses)) == exit_codes.FAILED
