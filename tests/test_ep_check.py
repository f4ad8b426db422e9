"""``check`` merges the ranks' verdicts on each case: one rank's failure fails the case."""

from __future__ import annotations

import pytest

from vllm_ep_kit.ep_check import CaseResult, merge_case_rows


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
    """Before, a merge of rank 0's verdict alone passed when another rank failed."""
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
