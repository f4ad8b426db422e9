"""One case's verdict against the oracle, its result as JSON, merged over ranks, and for
ranks that never produced one.

Every field a reader of ``check --json`` or of the merged row sees is stated here: which
rank each field comes from, and what a case that never ran looks like.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest
import torch

from vllm_ep_kit.reference.moe import RoutingCase, moe_reference, source_tokens
from vllm_ep_kit.reference.results import (
    OTHER_ROWS,
    VIA_COMBINE,
    CaseResult,
    compared,
    merge_case_rows,
    not_run_result,
    oracle_result,
    same_rows,
)
from vllm_ep_kit.reference.tolerance import COMBINE, LAYER

FIELDS = [
    "backend",
    "layout",
    "dtype",
    "tokens",
    "dispatch_exact",
    "max_error",
    "passed",
    "seconds",
    "note",
    "detail",
]


def rank_row(rank: int, **changes) -> CaseResult:
    """Rank ``rank``'s row of one case: every field says which rank it came from."""
    fields = {
        "backend": f"backend-{rank}",
        "layout": f"layout-{rank}",
        "dtype": f"dtype-{rank}",
        "tokens": f"tokens-{rank}",
        "dispatch_exact": True,
        "max_error": 0.001 * (rank + 1),
        "passed": True,
        "seconds": 0.1 * (rank + 1),
        "note": f"note of rank {rank}",
        "detail": {"rank": rank},
    }
    return CaseResult(**{**fields, **changes})


def test_as_dict_is_every_field_by_name_and_json_ready():
    row = rank_row(2, dispatch_exact=None, passed=False)
    data = row.as_dict()
    assert list(data) == FIELDS
    assert data == {name: getattr(row, name) for name in FIELDS}
    assert json.loads(json.dumps(data, allow_nan=False)) == data


@pytest.mark.parametrize("error", [math.nan, math.inf, -math.inf])
def test_as_dict_writes_an_error_that_is_not_a_number_as_null(error):
    data = rank_row(0, max_error=error).as_dict()
    assert data["max_error"] is None
    assert data["passed"] is True and data["note"] == "note of rank 0"  # nothing else moved


def test_merge_takes_the_case_from_rank_0_and_the_backend_from_the_caller():
    merged = merge_case_rows("merged-backend", [rank_row(0), rank_row(1), rank_row(2)])
    assert (merged.backend, merged.layout, merged.dtype, merged.tokens) == (
        "merged-backend",
        "layout-0",
        "dtype-0",
        "tokens-0",
    )


@pytest.mark.parametrize("largest", [0, 1, 2])
def test_merge_reports_the_largest_error_and_time_of_any_rank(largest):
    rows = [rank_row(r) for r in range(3)]
    rows[largest] = rank_row(largest, max_error=9.0, seconds=7.0)
    merged = merge_case_rows("b", rows)
    assert merged.max_error == 9.0
    assert merged.seconds == 7.0


@pytest.mark.parametrize("inexact", [0, 1, 2])
def test_merged_dispatch_is_exact_only_if_exact_on_every_rank(inexact):
    rows = [rank_row(r) for r in range(3)]
    assert merge_case_rows("b", rows).dispatch_exact is True
    rows[inexact] = rank_row(inexact, dispatch_exact=False)
    assert merge_case_rows("b", rows).dispatch_exact is False


def test_merged_dispatch_stays_unobserved_where_rank_0_could_not_observe_it():
    rows = [rank_row(0, dispatch_exact=None), rank_row(1), rank_row(2)]
    assert merge_case_rows("b", rows).dispatch_exact is None


def test_merge_of_passing_ranks_passes_with_rank_0s_note():
    merged = merge_case_rows("b", [rank_row(0), rank_row(1)])
    assert merged.passed is True
    assert merged.note == "note of rank 0"


@pytest.mark.parametrize("failing", [[0], [1], [2], [1, 2]])
def test_merge_fails_when_any_rank_failed_and_says_the_first_failing_ranks_note(failing):
    rows = [rank_row(r, passed=r not in failing) for r in range(3)]
    merged = merge_case_rows("b", rows)
    assert merged.passed is False
    assert merged.note == f"note of rank {failing[0]}"


def test_a_case_that_never_ran_failed_with_the_reason_and_no_error():
    result = not_run_result("b", "tp=1,dp=2,ep=2", "fp8", (3, 0), "rank 1 exited with code 3")
    assert result == CaseResult(
        backend="b",
        layout="tp=1,dp=2,ep=2",
        dtype="fp8",
        tokens="[3, 0]",
        dispatch_exact=None,
        max_error=result.max_error,
        passed=False,
        seconds=0.0,
        note="rank 1 exited with code 3",
    )
    assert math.isnan(result.max_error)
    assert result.as_dict()["max_error"] is None


CASE = RoutingCase(tokens=(5, 3), num_experts=8, top_k=2, hidden=32, dtype="fp16")


def verdict(out: torch.Tensor, exact: bool | None, source: int = 1) -> CaseResult:
    return oracle_result(
        "b", "tp=1,dp=2", CASE, out, source_tokens(CASE, source), time.perf_counter(), exact
    )


def oracle_out(source: int = 1) -> torch.Tensor:
    """The combined output a correct backend returns to ``source``, in the case's dtype."""
    return moe_reference(source_tokens(CASE, source), CASE.num_experts).to(CASE.combine_dtype)


@pytest.mark.parametrize(("exact", "note"), [(True, ""), (None, VIA_COMBINE)])
def test_an_output_matching_the_oracle_passes(exact, note):
    result = verdict(oracle_out(), exact)
    assert result.passed and result.note == note and result.dispatch_exact is exact
    assert (result.backend, result.layout, result.dtype, result.tokens) == (
        "b",
        "tp=1,dp=2",
        "fp16",
        "[5, 3]",
    )
    assert result.max_error < COMBINE["fp16"].atol and 0 <= result.seconds < 60


@pytest.mark.parametrize("exact", [True, None])
def test_an_output_off_by_more_than_the_tolerance_fails_saying_where(exact):
    out = oracle_out()
    out[2, 7] += 0.5
    result = verdict(out, exact)
    assert not result.passed and result.max_error == pytest.approx(0.5, rel=1e-2)
    assert "Mismatched elements: 1 / 96" in result.note


def test_an_inexact_dispatch_fails_even_when_the_output_matches():
    result = verdict(oracle_out(), False)
    assert not result.passed and result.dispatch_exact is False
    assert result.note == OTHER_ROWS


def test_the_oracle_is_of_the_tokens_this_rank_sent():
    result = verdict(oracle_out(source=0)[:3], True, source=1)  # another source's rows
    assert not result.passed


def test_an_output_of_the_wrong_shape_fails_with_an_infinite_error():
    result = verdict(oracle_out()[:2], True)
    assert not result.passed and result.max_error == math.inf
    assert "'shape' do not match" in result.note


def test_dispatched_rows_are_the_same_only_if_values_ids_and_weights_all_are():
    want = source_tokens(CASE, 0)
    assert same_rows(dataclasses.replace(want), want)
    for field in ("x", "topk_ids", "topk_weights"):
        changed = getattr(want, field).clone()
        changed[1, 0] += 1
        assert not same_rows(dataclasses.replace(want, **{field: changed}), want), field


def test_an_inexact_dispatch_with_a_wrong_output_says_both():
    out = oracle_out()
    out[0, 0] += 1.0
    result = verdict(out, False)
    assert result.note.startswith(OTHER_ROWS + "; ")
    assert "Mismatched elements: 1 / 96" in result.note


def test_as_dict_leaves_the_tensors_out_and_copies_the_detail():
    result = verdict(oracle_out(), True)
    data = result.as_dict()
    assert list(data) == FIELDS
    data["detail"]["added"] = 1
    assert result.detail == {}


def test_merge_takes_the_detail_of_the_first_failing_rank_and_no_tensors():
    rows = [rank_row(r, passed=r != 1) for r in range(3)]
    merged = merge_case_rows("b", rows)
    assert merged.detail == {"rank": 1}
    with pytest.raises(ValueError, match="kept no tensors"):
        merged.assert_close()


LAYER_CASE = RoutingCase(tokens=(3,), num_experts=4, top_k=2, hidden=4)


def layer_result(out: torch.Tensor, want: torch.Tensor, **detail) -> CaseResult:
    return compared(
        "b", "tp=1", LAYER_CASE, out, want, LAYER["fp32"], time.perf_counter(), **detail
    )


def test_a_compared_case_keeps_both_tensors_its_tolerance_and_its_detail():
    want = torch.ones(3, 4)
    good = layer_result(want.clone(), want, experts="torch")
    assert good.passed and good.note == "" and good.max_error == 0.0
    assert (good.backend, good.layout) == ("b", "tp=1")
    assert good.dispatch_exact is None and good.detail == {"experts": "torch"}
    assert (good.dtype, good.tokens) == ("bf16", "[3]") and 0 <= good.seconds < 60
    assert good.tolerance == LAYER["fp32"]
    torch.testing.assert_close(good.out, want, rtol=0, atol=0)
    torch.testing.assert_close(good.want, want, rtol=0, atol=0)
    good.assert_close()


def test_a_compared_case_off_by_one_element_fails_saying_which_and_by_how_much():
    want = torch.ones(3, 4)
    off = want.clone()
    off[1, 2] += 0.5
    bad = layer_result(off, want)
    assert not bad.passed and bad.max_error == pytest.approx(0.5)
    assert "Mismatched elements: 1 / 12" in bad.note
    with pytest.raises(AssertionError, match=r"(?s)rank 3 \(atol 0.0001, rtol 0.0001\).*1 / 12"):
        bad.assert_close("rank 3")


def test_a_compared_case_of_the_wrong_shape_fails_with_an_infinite_error():
    want = torch.ones(3, 4)
    short = layer_result(want[:2], want)
    assert (short.out.shape[0], short.want.shape[0]) == (2, 3)
    assert not short.passed and short.max_error == math.inf
    assert "'shape' do not match" in short.note
    with pytest.raises(AssertionError, match="shape"):
        short.assert_close()


def test_dispatch_findings_fail_a_case_and_lead_its_note():
    want = torch.ones(3, 4)
    result = layer_result(want.clone(), want, dispatch=["2 rows not sent here"])
    assert not result.passed and result.dispatch_exact is False
    assert result.note == "2 rows not sent here"
    exact = layer_result(want.clone(), want, dispatch=[])
    assert exact.passed and exact.dispatch_exact is True


def test_a_failure_without_a_place_names_the_case():
    want = torch.ones(3, 4)
    bad = layer_result(want + 1, want)
    with pytest.raises(AssertionError, match=r"^b, tp=1, bf16, tokens \[3\] \(atol"):
        bad.assert_close()


@pytest.mark.parametrize("dropped", ["out", "want", "tolerance"])
def test_a_result_missing_any_of_its_tensors_or_tolerance_cannot_be_re_checked(dropped):
    want = torch.ones(3, 4)
    partial = dataclasses.replace(layer_result(want.clone(), want), **{dropped: None})
    with pytest.raises(ValueError, match="kept no tensors"):
        partial.assert_close()
