"""``vllm-ep-kit bench``: byte accounting, the round-trip error, end to end.

Its arguments and plan are decided in test_plan.py, the merge over ranks and the
round-trip verdict in test_report.py.

The end-to-end cases run vLLM's real AGRS manager over gloo on CPU ranks
(wall clock: they prove the pipeline, not speed); the FlashInfer drivers
need 2 GPUs with NVLink.
"""

import json

import pytest
import torch

from tests.test_cli import cli, torchrun_cli
from vllm_ep_kit.commands.bench.drivers import roundtrip_error
from vllm_ep_kit.commands.bench.plan import BenchPoint, BenchRun, BenchSettings
from vllm_ep_kit.commands.bench.report import CHECK_TOLERANCE, merge_ranks
from vllm_ep_kit.commands.bench.traffic import (
    destinations,
    dispatch_row_bytes,
    rank_inputs,
    routed_remote_bytes,
)
from vllm_ep_kit.reference.formats import dequantize, quantize
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import Tokens, expert_owner

from .conftest import AGRS, ONE, TWO


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
    torch.testing.assert_close(x, q.view(torch.uint8), rtol=0, atol=0)
    torch.testing.assert_close(s, scale, rtol=0, atol=0)
    torch.testing.assert_close(
        dequantize(x.view(torch.float8_e4m3fn), s),
        Tokens(q, ids, weights, scale).values(),
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(got_ids, ids, rtol=0, atol=0)
    torch.testing.assert_close(got_w, weights, rtol=0, atol=0)
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

    from vllm_ep_kit.commands.bench.rank import rank_bench
    from vllm_ep_kit.patches.base import swapped

    original = AgRsAll2AllManager.combine
    doubled = lambda self, h, **kw: original(self, h, **kw) * 2  # noqa: E731 (a one-line stand-in)
    with swapped(AgRsAll2AllManager, combine=doubled):  # restored: a pooled rank runs on
        return rank_bench(ctx, run, settings, partial_dir)


@pytest.mark.vllm
def test_bench_round_trip_check_fails_on_a_broken_combine(tmp_path):
    from vllm_ep_kit.harness import run_ranks

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
    from vllm_ep_kit.commands.bench.rank import rank_bench
    from vllm_ep_kit.harness import run_ranks

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
