"""``vllm-ep-kit bench``: arguments, byte accounting, merging, the round-trip check, end to end.

The end-to-end cases run vLLM's real AGRS manager over gloo on CPU ranks
(wall clock: they prove the pipeline, not speed); the FlashInfer drivers
need 2 GPUs with NVLink.
"""

import json

import pytest
import torch

from tests.test_cli import cli, torchrun_cli
from vllm_ep_kit.bench.drivers import roundtrip_error
from vllm_ep_kit.bench.plan import (
    BenchArgumentError,
    BenchPoint,
    BenchRun,
    BenchSettings,
    make_bench_plan,
)
from vllm_ep_kit.bench.report import CHECK_TOLERANCE, merge_point, merge_ranks, read_partial_rows
from vllm_ep_kit.bench.traffic import (
    destinations,
    dispatch_row_bytes,
    rank_inputs,
    routed_remote_bytes,
)
from vllm_ep_kit.layout import ParallelLayout
from vllm_ep_kit.reference.formats import dequantize, quantize
from vllm_ep_kit.reference.moe import Tokens, expert_owner

AGRS = "allgather_reducescatter"
ONE = "flashinfer_nvlink_one_sided"
TWO = "flashinfer_nvlink_two_sided"


def plan(**overrides):
    args = {
        "world_size": 2,
        "backends": None,
        "tokens": [1, 8],
        "hiddens": [512],
        "dtypes": ["bf16"],
        "settings": BenchSettings(),
        "gpu_count": 0,
        "usable": [AGRS],
        "unusable": {ONE: "needs CUDA GPUs", TWO: "needs CUDA GPUs"},
    }
    args |= overrides
    return make_bench_plan(
        args["world_size"],
        args["backends"],
        args["tokens"],
        args["hiddens"],
        args["dtypes"],
        args["settings"],
        args["gpu_count"],
        args["usable"],
        args["unusable"],
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"world_size": 1}, "--world-size: 1 is too small"),
        ({"world_size": 4, "gpu_count": 2}, "--world-size: 4 ranks but only 2 GPUs visible"),
        ({"backends": ["nope"]}, "--backends: unknown backend 'nope'"),
        ({"backends": [ONE]}, f"--backends: {ONE} is not usable on this machine: needs CUDA GPUs"),
        ({"tokens": [0, 4]}, "--tokens: .* expected token counts >= 1"),
        ({"dtypes": ["int4"]}, "--dtypes: unknown dtype 'int4'"),
        ({"dtypes": ["fp8"], "hiddens": [256]}, "--hidden: \\[256\\] with fp8"),
        ({"settings": BenchSettings(top_k=9, num_experts=8)}, "--top-k: 9: expected 1..--experts"),
        ({"settings": BenchSettings(num_experts=255)}, "--experts: 255 is not divisible"),
        ({"settings": BenchSettings(repeats=0)}, "--repeats/--warmup"),
    ],
)
def test_bench_argument_errors_name_the_argument(overrides, message):
    with pytest.raises(BenchArgumentError, match=message):
        plan(**overrides)


def test_plan_runs_usable_backends_and_lists_the_rest():
    got = plan(dtypes=["bf16", "fp8"], tokens=[8, 1, 8])
    assert [run.backend for run in got.runs] == [AGRS]
    assert got.runs[0].layout.describe() == "tp=1,dp=2,ep=2"
    assert [p.describe() for p in got.runs[0].points] == [
        "tokens=1 hidden=512 bf16",
        "tokens=8 hidden=512 bf16",
        "tokens=1 hidden=512 fp8",
        "tokens=8 hidden=512 fp8",
    ]
    assert dict(got.skipped) == {
        ONE: "not usable here: needs CUDA GPUs",
        TWO: "not usable here: needs CUDA GPUs",
    }
    assert got.device_backend == "gloo"


def test_destinations_match_a_per_token_count():
    settings = BenchSettings(top_k=8, num_experts=64)
    inputs = rank_inputs(BenchPoint(tokens=50, hidden=512, dtype="bf16"), settings, 1, 4)
    owner = expert_owner(64, 4)
    expected = [0] * 4
    for row in inputs.tokens.topk_ids.tolist():
        for dest in {int(owner[e]) for e in row}:
            expected[dest] += 1
    assert inputs.rows_to == expected
    assert inputs.copies.tolist() == [
        len({int(owner[e]) for e in row}) for row in inputs.tokens.topk_ids.tolist()
    ]
    hit = destinations(inputs.tokens.topk_ids, 64, 4)
    assert hit.sum().item() == sum(expected)


def test_fp8_rows_travel_as_bytes_with_their_scales():
    """What the drivers hand the all-to-all: fp8 as raw bytes plus block scales, bf16 as is."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(5, 256, generator=gen)
    ids = torch.randint(0, 16, (5, 2), dtype=torch.int32, generator=gen)
    weights = torch.full((5, 2), 0.5)
    q, scale = quantize("fp8", values, 0)
    x, s, got_ids, got_w = Tokens(q, ids, weights, scale).wire("cpu")
    assert x.dtype == torch.uint8 and x.shape == (5, 256)
    assert torch.equal(x, q.view(torch.uint8)) and torch.equal(s, scale)
    assert torch.equal(
        dequantize(x.view(torch.float8_e4m3fn), s), Tokens(q, ids, weights, scale).values()
    )
    assert torch.equal(got_ids, ids) and torch.equal(got_w, weights)
    bf16 = values.to(torch.bfloat16)
    x, s, _, _ = Tokens(bf16, ids, weights).wire("cpu")
    assert s is None and x.dtype == torch.bfloat16 and torch.equal(x, bf16)


def test_bytes_per_row_and_leaving_the_rank():
    assert dispatch_row_bytes(7168, "bf16", 8) == 7168 * 2 + 64
    assert dispatch_row_bytes(7168, "fp8", 8) == 7168 + 7168 // 128 * 4 + 64
    point = BenchPoint(tokens=16, hidden=512, dtype="bf16")
    inputs = rank_inputs(point, BenchSettings(), 0, 2)
    remote = inputs.rows_to[1]
    assert routed_remote_bytes(inputs, 0, point, 8) == remote * (512 * 2 + 64 + 512 * 2)


def rank_row(rank, total, base, nbytes, error=0.0, tokens=8):
    return {
        "backend": AGRS,
        "tokens": tokens,
        "hidden": 512,
        "dtype": "bf16",
        "rank": rank,
        "dispatch_ms": total / 2,
        "combine_ms": total / 2,
        "total_ms": total,
        "remote_bytes": nbytes,
        "check_error": error,
        "baseline": "torch_all_to_all",
        "baseline_ms": base,
        "baseline_remote_bytes": nbytes,
    }


def test_merge_takes_the_slowest_rank_and_reports_ratios():
    row = merge_point([rank_row(0, 2.0, 1.0, 1e6), rank_row(1, 4.0, 3.0, 3e6)], link_gbps=10.0)
    assert row["total_ms"] == 4.0 and row["baseline_ms"] == 3.0
    assert row["gbps"] == pytest.approx(2e6 / 4e-3 / 1e9)
    assert row["vs_baseline"] == pytest.approx(0.75)
    assert row["vs_link"] == pytest.approx(row["gbps"] / 10.0)
    assert row["check"] == "ok"
    bad = merge_point([rank_row(0, 1, 1, 1, error=CHECK_TOLERANCE * 5), rank_row(1, 1, 1, 1)], None)
    assert bad["check"] == "FAILED" and bad["vs_link"] is None


def test_partial_rows_keep_only_points_every_rank_finished(tmp_path):
    (tmp_path / f"{AGRS}.rank0.jsonl").write_text(
        json.dumps(rank_row(0, 1, 1, 1, tokens=1))
        + "\n"
        + json.dumps(rank_row(0, 1, 1, 1, tokens=2))
        + "\n"
    )
    (tmp_path / f"{AGRS}.rank1.jsonl").write_text(
        json.dumps(rank_row(1, 1, 1, 1, tokens=1)) + "\n" + '{"torn'
    )
    rows = merge_ranks(read_partial_rows(tmp_path, AGRS), 2, None)
    assert [r["tokens"] for r in rows] == [1]


def test_roundtrip_error_flags_a_wrong_combine():
    x = torch.randn(5, 64)
    copies = torch.tensor([1, 2, 2, 1, 2])
    right = x * copies.unsqueeze(1)
    assert roundtrip_error(right.bfloat16(), x, copies) < CHECK_TOLERANCE
    assert roundtrip_error(right * 2, x, copies) > CHECK_TOLERANCE  # double counted
    assert roundtrip_error(x, x, copies) > CHECK_TOLERANCE  # second copy lost
    assert roundtrip_error(right[:4], x, copies) == float("inf")  # a token missing


@pytest.mark.vllm
def test_bench_end_to_end_on_cpu_ranks(tmp_path):
    """vLLM's AGRS over gloo beside all_to_all_single: JSON, table, plot, replot."""
    from vllm_ep_kit.backends import usability

    agrs = next(row for row in usability() if row.name == AGRS)
    if not agrs.usable:
        pytest.skip(f"{AGRS} not usable here: {agrs.reason}")
    out = tmp_path / "b"
    # One expert per token: a token-routed exchange would return it once, the all-gather
    # returns it once per rank (2), so the round trip tells the two apart.
    proc = cli(
        "bench",
        "--tokens",
        "1,8",
        "--hidden",
        "512",
        "--dtypes",
        "bf16,fp8",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--backends",
        AGRS,
        "--out",
        str(out),
        "--top-k",
        "1",
        "--experts",
        "4",
        "--width",
        "200",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "bench.json").read_text())
    rows = report["results"]
    assert [(r["dtype"], r["tokens"]) for r in rows] == [
        ("bf16", 1),
        ("bf16", 8),
        ("fp8", 1),
        ("fp8", 8),
    ]
    for r in rows:
        assert r["check"] == "ok", r  # bf16 and dequantised fp8 round trips
        assert r["total_ms"] > 0 and r["baseline_ms"] > 0 and r["vs_baseline"] > 0
        assert r["ranks"] == 2
    assert report["failures"] == []
    assert "[4/4]" in proc.stdout and "vs all_to_all" in proc.stdout
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").stat().st_size > 10_000
    (out / "bench.png").unlink()
    again = cli("bench", "--from-json", str(out / "bench.json"))
    assert again.returncode == 0, again.stderr
    assert (out / "bench.png").is_file()


@pytest.mark.vllm
def test_bench_under_torchrun_writes_one_report_from_every_rank(tmp_path):
    """torchrun's processes are the ranks: rank 0 alone checks --out, prints and writes
    bench.json, whose rows merge both ranks (each rank wrote its partial rows)."""
    out = tmp_path / "b"
    proc = torchrun_cli(
        2,
        "bench",
        "--tokens",
        "1,8",
        "--hidden",
        "512",
        "--dtypes",
        "bf16",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--backends",
        AGRS,
        "--out",
        str(out),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report == json.loads((out / "bench.json").read_text())
    assert [(r["tokens"], r["ranks"], r["check"]) for r in report["results"]] == [
        (1, 2, "ok"),
        (8, 2, "ok"),
    ]
    assert sorted(p.name for p in (out / "partial").iterdir()) == [
        f"{AGRS}.rank0.jsonl",
        f"{AGRS}.rank1.jsonl",
    ]
    assert proc.stderr.count("[2/2]") == 1
    again = torchrun_cli(
        2,
        "bench",
        "--tokens",
        "1",
        "--hidden",
        "512",
        "--backends",
        AGRS,
        "--out",
        str(out),
        timeout=300,
    )
    assert again.returncode != 0 and "--out: " in again.stderr and "not empty" in again.stderr


def rank_bench_with_doubled_combine(ctx, run, settings, partial_dir):
    """Negative control: vLLM's AGRS combine returning twice the sum."""
    from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

    from vllm_ep_kit.bench.rank import rank_bench
    from vllm_ep_kit.patches.base import swapped

    original = AgRsAll2AllManager.combine
    doubled = lambda self, h, **kw: original(self, h, **kw) * 2  # noqa: E731 (a one-line stand-in)
    with swapped(AgRsAll2AllManager, combine=doubled):  # restored: a pooled rank runs on
        return rank_bench(ctx, run, settings, partial_dir)


@pytest.mark.vllm
def test_bench_round_trip_check_fails_on_a_broken_combine(tmp_path):
    from vllm_ep_kit.testing import run_ranks

    layout = ParallelLayout.for_world(2, tp=1)
    run = BenchRun(AGRS, layout, (BenchPoint(4, 512, "bf16"),))
    per_rank = run_ranks(
        rank_bench_with_doubled_combine,
        2,
        run,
        BenchSettings(warmup=0, repeats=1),
        str(tmp_path),
        backend="gloo",
        layout=layout,
        all2all_backend=AGRS,
        timeout_s=300,
    )
    rows = merge_ranks([r for ranks in per_rank for r in ranks["rows"]], 2, None)
    assert rows[0]["check"] == "FAILED"


def test_bench_from_json_rejects_other_files(tmp_path):
    bogus = tmp_path / "x.json"
    bogus.write_text("{}")
    proc = cli("bench", "--from-json", str(bogus))
    assert proc.returncode == 2 and "--from-json" in proc.stderr


@pytest.mark.gpus(2)
@pytest.mark.nvlink
@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("backend", [ONE, TWO])
def test_bench_flashinfer_round_trip_on_gpus(tmp_path, backend):
    """The bench's FlashInfer drivers on 2 GPUs: every point's round trip checks out."""
    from vllm_ep_kit.bench.rank import rank_bench
    from vllm_ep_kit.testing import run_ranks

    layout = ParallelLayout.for_world(2, tp=1)
    points = tuple(
        BenchPoint(n, h, d) for h in (2048,) for d in ("bf16", "fp8") for n in (1, 7, 128)
    )
    run = BenchRun(backend, layout, points)
    per_rank = run_ranks(
        rank_bench,
        2,
        run,
        BenchSettings(warmup=1, repeats=3),
        str(tmp_path),
        backend="nccl",
        layout=layout,
        all2all_backend=backend,
        timeout_s=300,
    )
    rows = merge_ranks([r for ranks in per_rank for r in ranks["rows"]], 2, None)
    assert len(rows) == len(points)
    assert all(r["check"] == "ok" for r in rows), rows
    assert all(ranks["link"]["gbps"] for ranks in per_rank), per_rank
