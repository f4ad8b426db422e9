"""``bench``'s report: per-point merge over ranks (slowest rank, mean bytes, GB/s, ratios,
the round-trip verdict), the link limit, partial rows, and the check of a report read back
(fast, in process)."""

import json
import math

import pytest

from vllm_ep_kit.commands.bench.report import (
    CHECK_TOLERANCE,
    check_report,
    link_summary,
    merge_point,
    merge_ranks,
    read_partial_rows,
)

from .conftest import AGRS, ONE, TWO, rank_row


def exactly(value):
    return pytest.approx(value, rel=1e-12, abs=0)


def test_each_field_of_a_merged_point_comes_from_the_slowest_rank_or_the_mean():
    ranks = [
        rank_row(0, dispatch=1.0, combine=3.0, total=4.0, base=2.0, nbytes=1e6, base_bytes=4e6),
        rank_row(1, dispatch=5.0, combine=1.0, total=8.0, base=1.0, nbytes=2e6, base_bytes=2e6),
        rank_row(2, dispatch=2.0, combine=6.0, total=5.0, base=6.0, nbytes=6e6, base_bytes=6e6),
    ]
    for rank, error in zip(ranks, (0.001, 0.004, 0.002), strict=True):
        rank["check_error"] = error  # the worst in the middle
    row = merge_point(ranks, link_gbps=1.5)
    assert row == {
        "backend": AGRS,
        "hidden": 512,
        "dtype": "bf16",
        "tokens": 8,
        "ranks": 3,
        "dispatch_ms": 5.0,
        "combine_ms": 6.0,
        "total_ms": 8.0,
        "remote_bytes": exactly(3e6),
        "gbps": exactly(0.375),  # 3 MB in 8 ms
        "baseline": "torch_all_to_all",
        "baseline_ms": 6.0,
        "baseline_gbps": exactly(4e6 / 6e-3 / 1e9),
        "vs_baseline": exactly(0.75),
        "vs_link": exactly(0.25),
        "check_error": 0.004,
        "check": "ok",
    }


def test_gigabytes_per_second_are_bytes_over_seconds():
    row = merge_point([rank_row(0, total=2.0, base=4.0, nbytes=3e6, base_bytes=1e7)], 0.5)
    assert row["gbps"] == exactly(1.5)
    assert row["baseline_gbps"] == exactly(2.5)
    assert row["vs_baseline"] == exactly(2.0)
    assert row["vs_link"] == exactly(3.0)
    short = merge_point([rank_row(0, total=0.5, base=0.25, nbytes=1e6, base_bytes=1e6)], 4.0)
    assert short["gbps"] == exactly(2.0)
    assert short["baseline_gbps"] == exactly(4.0)
    assert short["vs_baseline"] == exactly(0.5)
    assert short["vs_link"] == exactly(0.5)


def test_a_point_merged_from_one_rank_keeps_its_values():
    row = merge_point([rank_row(0, total=1.0, base=1.0, nbytes=1e9, error=None)], None)
    assert row["ranks"] == 1 and row["total_ms"] == 1.0
    assert row["gbps"] == exactly(1000.0)
    assert row["vs_link"] is None
    assert (row["check_error"], row["check"]) == (None, "not checked")


@pytest.mark.parametrize(
    ("errors", "check_error", "check"),
    [
        ([0.0, 0.0], 0.0, "ok"),
        ([CHECK_TOLERANCE, 0.001], CHECK_TOLERANCE, "ok"),
        (
            [0.001, math.nextafter(CHECK_TOLERANCE, 1.0)],
            math.nextafter(CHECK_TOLERANCE, 1.0),
            "FAILED",
        ),
        ([None, 0.003, None], 0.003, "ok"),
        ([None, CHECK_TOLERANCE * 2, None], CHECK_TOLERANCE * 2, "FAILED"),
        ([None, None], None, "not checked"),
        ([0.001, 0.002, 0.5, None, 0.004], 0.5, "FAILED"),
        ([0.5, 0.001, 0.002], 0.5, "FAILED"),
        ([0.001, 0.002, float("inf")], float("inf"), "FAILED"),
    ],
    ids=[
        "exact on every rank",
        "at the tolerance",
        "just above the tolerance",
        "checked on one rank",
        "failed on the one rank that checked",
        "checked on no rank",
        "one failing rank among many",
        "the first rank failing",
        "a token missing on one rank",
    ],
)
def test_the_round_trip_verdict_is_the_worst_checked_rank_against_the_tolerance(
    errors, check_error, check
):
    row = merge_point([rank_row(r, error=e) for r, e in enumerate(errors)], None)
    assert (row["check_error"], row["check"]) == (check_error, check)


def test_a_zero_time_gives_no_bandwidth_and_no_ratio():
    never = merge_point([rank_row(0, total=0.0, base=0.0), rank_row(1, total=0.0, base=0.0)], 10.0)
    assert [never[k] for k in ("gbps", "baseline_gbps", "vs_baseline", "vs_link")] == [None] * 4
    instant_baseline = merge_point([rank_row(0, total=2.0, base=0.0, nbytes=2e6)], 10.0)
    assert instant_baseline["baseline_gbps"] is None
    assert instant_baseline["vs_baseline"] == 0.0
    assert instant_baseline["gbps"] == exactly(1.0)
    assert instant_baseline["vs_link"] == exactly(0.1)


def test_no_link_limit_or_a_zero_one_gives_no_link_ratio():
    for link in (None, 0.0):
        row = merge_point([rank_row(0, total=2.0, nbytes=2e6)], link)
        assert row["gbps"] == exactly(1.0) and row["vs_link"] is None


def test_merge_keeps_points_every_rank_measured_in_measuring_order():
    rows = [
        rank_row(0, tokens=4, total=1.0),
        rank_row(0, tokens=1, total=2.0),
        rank_row(0, tokens=1, dtype="fp8", total=3.0),
        rank_row(0, tokens=1, hidden=1024, total=4.0),
        rank_row(0, tokens=1, backend=ONE, total=5.0),
        rank_row(1, tokens=1, backend=ONE, total=5.5),
        rank_row(1, tokens=1, hidden=1024, total=4.5),
        rank_row(1, tokens=1, dtype="fp8", total=3.5),
        rank_row(1, tokens=1, total=2.5),
        rank_row(1, tokens=2, total=9.0),  # rank 0 did not reach it
    ]
    rows[3]["check_error"] = 1.0
    merged = merge_ranks(rows, 2, link_gbps=4.0)
    assert [(r["backend"], r["tokens"], r["hidden"], r["dtype"]) for r in merged] == [
        (AGRS, 1, 512, "bf16"),
        (AGRS, 1, 512, "fp8"),
        (AGRS, 1, 1024, "bf16"),
        (ONE, 1, 512, "bf16"),
    ]
    assert [r["total_ms"] for r in merged] == [2.5, 3.5, 4.5, 5.5]
    assert [r["ranks"] for r in merged] == [2] * 4
    assert [r["check"] for r in merged] == ["ok", "ok", "FAILED", "ok"]
    assert merged[0]["vs_link"] == exactly(1e6 / 2.5e-3 / 1e9 / 4.0)
    assert merge_ranks(rows, 1, None) == [
        merge_point([rows[0]], None),
        merge_point([rows[-1]], None),
    ]
    assert merge_ranks(rows, 3, None) == []


def lines(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_partial_rows_keep_only_points_every_rank_finished(tmp_path):
    (tmp_path / f"{AGRS}.rank1.jsonl").write_text(lines(rank_row(1, tokens=1)) + '{"torn')
    (tmp_path / f"{AGRS}.rank0.jsonl").write_text(
        lines(rank_row(0, tokens=1), rank_row(0, tokens=2))
    )
    rows = read_partial_rows(tmp_path, AGRS)
    assert [(r["rank"], r["tokens"]) for r in rows] == [(0, 1), (0, 2), (1, 1)]
    assert [r["tokens"] for r in merge_ranks(rows, 2, None)] == [1]


def test_partial_rows_are_the_backends_own_and_a_bad_line_skips_only_itself(tmp_path):
    (tmp_path / f"{AGRS}.rank0.jsonl").write_text(
        lines(rank_row(0, tokens=1)) + "{not json\n\n" + lines(rank_row(0, tokens=2))
    )
    (tmp_path / f"{ONE}.rank0.jsonl").write_text(lines(rank_row(0, backend=ONE)))
    (tmp_path / f"{AGRS}.rank1.json").write_text(lines(rank_row(1)))
    (tmp_path / f"{AGRS}.log").write_text(lines(rank_row(1)))
    rows = read_partial_rows(str(tmp_path), AGRS)
    assert rows == [rank_row(0, tokens=1), rank_row(0, tokens=2)]
    assert read_partial_rows(tmp_path, TWO) == []


def test_the_link_limit_is_the_slowest_rank():
    links = [{"gbps": 30.0}, {"gbps": 10.0}, {"gbps": 20.0}]
    assert link_summary(links) == {"gbps": 10.0, "per_rank": links}


def test_one_rank_without_a_link_rate_leaves_no_limit_and_says_why():
    links = [
        {"gbps": 5.0, "why": "measured"},
        {"gbps": None, "why": "no peer access"},
        {"gbps": None, "why": "second"},
    ]
    assert link_summary(links) == {"gbps": None, "why": "no peer access", "per_rank": links}
    silent = [{"gbps": 5.0}, {"gbps": None}]
    assert link_summary(silent) == {"gbps": None, "why": "", "per_rank": silent}


def report(**results_row):
    row = merge_point([rank_row(0), rank_row(1)], 100.0)
    return {
        "meta": {"world_size": 2, "timer": "cuda events", "device": "H200"},
        "results": [row, {**row, **results_row}],
        "links": [{"backend": AGRS, "gbps": 100.0}, {"backend": ONE, "gbps": None, "why": "x"}],
        "failures": [],
    }


def test_a_report_as_bench_writes_it_passes_the_check():
    check_report(report())
    check_report({"meta": {}, "results": []})


REQUIRED = [
    "backend",
    "hidden",
    "dtype",
    "tokens",
    "dispatch_ms",
    "combine_ms",
    "total_ms",
    "gbps",
    "vs_baseline",
    "vs_link",
    "check",
    "baseline",
    "baseline_gbps",
]


@pytest.mark.parametrize("field", REQUIRED)
def test_a_result_without_a_required_field_is_named_in_one_line(field):
    broken = report()
    del broken["results"][1][field]
    with pytest.raises(ValueError) as caught:
        check_report(broken)
    assert str(caught.value) == f"results[1]: {field!r} is a required property"


@pytest.mark.parametrize("part", ["meta", "results"])
def test_a_report_without_a_required_part_is_named_in_one_line(part):
    broken = report()
    del broken[part]
    with pytest.raises(ValueError) as caught:
        check_report(broken)
    assert str(caught.value) == f"the report: {part!r} is a required property"


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ([], "the report: [] is not of type 'object'"),
        ({"meta": [], "results": []}, "meta: [] is not of type 'object'"),
        (
            {"meta": {"world_size": "2"}, "results": []},
            "meta.world_size: '2' is not of type 'integer'",
        ),
        (
            {"meta": {"world_size": 0}, "results": []},
            "meta.world_size: 0 is less than the minimum of 1",
        ),
        ({"meta": {"timer": 1}, "results": []}, "meta.timer: 1 is not of type 'string'"),
        ({"meta": {}, "results": {}}, "results: {} is not of type 'array'"),
        ({"meta": {}, "results": [[]]}, "results[0]: [] is not of type 'object'"),
        (report(hidden=0), "results[1].hidden: 0 is less than the minimum of 1"),
        (report(tokens=1.5), "results[1].tokens: 1.5 is not of type 'integer'"),
        (report(total_ms="1"), "results[1].total_ms: '1' is not of type 'number', 'null'"),
        (report(check=None), "results[1].check: None is not of type 'string'"),
        (report(backend=3), "results[1].backend: 3 is not of type 'string'"),
        ({**report(), "links": [{}]}, "links[0]: 'backend' is a required property"),
        (
            {**report(), "links": [{"backend": AGRS, "gbps": "fast"}]},
            "links[0].gbps: 'fast' is not of type 'number', 'null'",
        ),
        (
            {**report(), "links": [{"backend": AGRS, "why": 1}]},
            "links[0].why: 1 is not of type 'string'",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_named_by_its_path(broken, message):
    with pytest.raises(ValueError) as caught:
        check_report(broken)
    assert str(caught.value) == message
    assert "\n" not in message
