"""The one tolerance table and its close-check, on both sides of every entry.

A control just inside and one just outside each bound: one far outside would let a
tolerance 100x too loose pass.  ``close`` follows ``torch.allclose``'s rule
(``|a - e| <= atol + rtol * |e|``), so near zero the absolute part decides and far from
zero the relative part does.
"""

from __future__ import annotations

import pytest
import torch

from vllm_ep_kit.reference.tolerance import (
    BENCH_CHECK,
    COMBINE,
    LAYER,
    Tolerance,
    close,
    mismatch,
)

TABLE = {f"combine-{k}": v for k, v in COMBINE.items()} | {
    f"layer-{k}": v for k, v in LAYER.items()
}


@pytest.mark.parametrize("entry", sorted(TABLE))
@pytest.mark.parametrize(("factor", "within"), [(0.5, True), (3.0, False), (5.0, False)])
def test_one_element_just_inside_or_outside_each_bound(entry, factor, within):
    tolerance = TABLE[entry]
    expected = torch.linspace(-3.0, 3.0, 64).reshape(8, 8)
    actual = expected.clone()
    actual[2, 5] += factor * (tolerance.atol + tolerance.rtol * abs(float(expected[2, 5])))
    assert close(actual, expected, tolerance) is within
    assert close(expected, expected, tolerance) is True
    assert (mismatch(actual, expected, tolerance) == "") is within


@pytest.mark.parametrize("entry", sorted(TABLE))
@pytest.mark.parametrize(("factor", "within"), [(0.5, True), (2.0, False)])
def test_near_zero_the_absolute_tolerance_decides(entry, factor, within):
    tolerance = TABLE[entry]
    expected = torch.zeros(2, 3)
    actual = expected.clone()
    actual[1, 0] = factor * tolerance.atol
    assert close(actual, expected, tolerance) is within


@pytest.mark.parametrize("entry", sorted(TABLE))
@pytest.mark.parametrize(("factor", "within"), [(0.5, True), (1.5, False)])
def test_far_from_zero_the_relative_tolerance_decides(entry, factor, within):
    tolerance = TABLE[entry]
    expected = torch.full((3,), 100.0)
    # the absolute part adds at most 1% of the relative one here
    actual = expected + factor * tolerance.rtol * 100.0
    assert close(actual, expected, tolerance) is within


def test_a_shape_mismatch_is_never_close_and_a_dtype_never_matters():
    tight = COMBINE["fp32"]
    assert close(torch.zeros(4, 4), torch.zeros(3, 4), tight) is False
    assert close(torch.zeros(2, 3), torch.zeros(3, 2), tight) is False
    assert close(torch.zeros(3, 4).bfloat16(), torch.zeros(3, 4), tight) is True
    assert "shape" in mismatch(torch.zeros(4, 4), torch.zeros(3, 4), tight)


def test_a_mismatch_is_one_line_saying_what_differs_and_by_how_much():
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert mismatch(expected + 1e-6, expected, Tolerance(1e-5, 1e-5)) == ""
    actual = expected.clone()
    actual[2] += 0.5
    note = mismatch(actual, expected, Tolerance(1e-5, 1e-5))
    parts = note.split("; ")
    assert "\n" not in note, note
    assert parts[1].startswith("Mismatched elements: 1 / 4")
    assert parts[2].startswith("Greatest absolute difference: 0.5 at index (2,)")
    assert parts[3].startswith("Greatest relative difference")
    # a tolerance that allows the difference, by either part, finds it close again
    assert mismatch(actual, expected, Tolerance(0.6, 0.0)) == ""
    assert mismatch(actual, expected, Tolerance(0.0, 0.2)) == ""


def test_the_table_orders_what_rounds_more_as_looser():
    """What the entries say of each other: fp32 tighter than fp16 tighter than bf16, the
    quantised payloads combined in bf16 at bf16's bound, a layer's fused bf16 looser than
    its bf16, TF32 between fp32 and bf16, and bench's check at the bf16 combine's."""
    assert COMBINE["fp32"].atol < COMBINE["fp16"].atol < COMBINE["bf16"].atol
    assert COMBINE["fp8"] == COMBINE["mxfp8"] == COMBINE["nvfp4"] == COMBINE["bf16"]
    assert LAYER["fp32"].atol < LAYER["tf32"].atol < LAYER["bf16"].atol
    assert LAYER["bf16"].atol < LAYER["bf16-fused"].atol < LAYER["fp8"].atol
    assert COMBINE["bf16"] == BENCH_CHECK
    for tolerance in TABLE.values():
        assert tolerance.atol > 0 and tolerance.rtol > 0
