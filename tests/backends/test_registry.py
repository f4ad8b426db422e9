"""A backend from outside the kit, registered through the public registry, runs everywhere.

The loopback backend below is written here, not in ``vllm_ep_kit``: its
transport moves every EP rank's tokens to every rank with gloo object
collectives on the EP group's CPU group and sums each source's expert
outputs back.  Registered once, ``check``, the MoE layer matrix, ``bench``
and ``doctor`` all run it on CPU ranks without any other module edited; a
variant whose combine drops the other ranks' outputs must fail each of them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch.distributed as dist

from vllm_ep_kit import backends
from vllm_ep_kit.backends import TO_GROUP, Backend, Dispatched, Needs, Transport
from vllm_ep_kit.harness import run_ranks
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import Tokens, concat_tokens

pytestmark = pytest.mark.vllm

TOY = "toy_loopback"


class LoopbackTransport(Transport):
    """All-gather of every rank's rows (gloo objects), and back: a reduce of each source's."""

    name = "toy loopback over gloo objects"

    def __init__(self, ctx, backend):
        super().__init__(ctx, backend)
        from vllm.distributed import parallel_state as ps

        ep = ps.get_ep_group()
        self.group, self.rank, self.world = ep.cpu_group, ep.rank_in_group, ep.world_size

    def _gather(self, value):
        out = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def dispatch(self, tokens):
        parts = self._gather(
            Tokens(
                x=tokens.x.cpu(),
                topk_ids=tokens.topk_ids.cpu(),
                topk_weights=tokens.topk_weights.cpu(),
                x_scale=None if tokens.x_scale is None else tokens.x_scale.cpu(),
            )
        )
        return Dispatched(
            concat_tokens(parts), state=[p.x.shape[0] for p in parts], source_rows=tokens.x.shape[0]
        )

    def combine(self, dispatched, partial):
        per_source = self._gather(list(partial.cpu().split(dispatched.state)))
        return sum(outputs[self.rank] for outputs in per_source)


class DropsPeersTransport(LoopbackTransport):
    """The planted bug: combine keeps this rank's own expert outputs only."""

    def combine(self, dispatched, partial):
        start = sum(dispatched.state[: self.rank])
        return partial[start : start + dispatched.source_rows].cpu()


LOOPBACK = Backend(
    TOY,
    Needs(cpu_ok=True),
    note="a test's loopback backend",
    transport=LoopbackTransport,
    delivers_to=TO_GROUP,
    check_dtypes=("bf16", "fp32"),
    bench_dtypes=("bf16",),
    layer_quants=("bf16", "fp32"),
    layer_driven=("bf16", "fp32"),
)
BROKEN = dataclasses.replace(LOOPBACK, transport=DropsPeersTransport)


@pytest.fixture(params=[LOOPBACK, BROKEN], ids=["loopback", "drops-peers"])
def toy(request):
    """The toy backend registered for the test, and whether it is the broken variant."""
    backends.register(request.param)
    try:
        yield request.param.transport is DropsPeersTransport
    finally:
        backends.unregister(TOY)


def test_check_runs_a_registered_backend(toy):
    from vllm_ep_kit.commands.check import make_plan, run_check

    plan = make_plan(
        [2], [1], [TOY], ["fp32", "bf16"], gpu_count=0, usable=backends.usable_backend_names()
    )
    assert [(run.backend, run.layout.describe()) for run in plan.runs] == [(TOY, "tp=1,dp=2,ep=2")]
    results = run_check(plan, timeout_s=240)
    assert len(results) == 6  # two dtypes x even / uneven / one rank empty
    if toy:
        assert [r.passed for r in results if r.tokens != "[0, 0]"].count(True) == 0
    else:
        assert all(r.passed for r in results), [r.as_dict() for r in results]
        assert all(r.note == "dispatch checked through the combined output" for r in results)


def test_layer_matrix_runs_a_registered_backend(toy):
    from tests.drivers.moe_layer import (
        MoeLayerCell,
        all_cells,
        cell_outcome,
        layer_cases,
        rank_moe_layer,
    )

    cells = [c for c in all_cells() if c.backend == TOY]
    assert {c.quant for c in cells} == {"fp32", "bf16", "fp8", "nvfp4"}
    cell = MoeLayerCell(TOY, "bf16", "dp2-ep")
    assert cell_outcome(cell, 0) == ("", "")
    assert cell_outcome(MoeLayerCell(TOY, "fp8", "dp2-ep"), 0)[0] == "not applicable"
    layout = ParallelLayout(tp=1, dp=2)
    rows = [
        row
        for per_rank in run_ranks(
            rank_moe_layer,
            2,
            cell,
            layer_cases(layout, "bf16"),
            backend="gloo",
            layout=layout,
            timeout_s=240,
        )
        for row in per_rank
    ]
    assert rows and all(r.detail["transport"] == LoopbackTransport.name for r in rows)
    moved = [r for r in rows if len(r.want)]
    assert all(r.passed for r in moved) != toy, [r.describe() + ": " + r.note for r in rows]


def test_bench_runs_a_registered_backend(toy, tmp_path):
    from vllm_ep_kit.commands.bench.plan import BenchSettings, make_bench_plan
    from vllm_ep_kit.commands.bench.report import CHECK_TOLERANCE
    from vllm_ep_kit.commands.bench.sweep import run_bench

    settings = BenchSettings(top_k=2, num_experts=8, warmup=1, repeats=2)
    plan = make_bench_plan(
        2,
        [TOY],
        [1, 8],
        [256],
        ["bf16"],
        settings,
        gpu_count=0,
        usable=backends.usable_backend_names(),
    )
    report = run_bench(plan, tmp_path / "partial", timeout_s=240)
    assert report["failures"] == []
    rows = report["results"]
    assert sorted(r["tokens"] for r in rows) == [1, 8]
    assert all(r["backend"] == TOY for r in rows)
    assert all((r["check_error"] > CHECK_TOLERANCE) == toy for r in rows), rows


def test_doctor_lists_a_registered_backend(toy):
    from vllm_ep_kit.commands import doctor

    rows = {row["name"]: row for row in doctor.collect()["backends"]}
    assert rows[TOY]["usable"] and rows[TOY]["driven"]


def test_names_are_unique_and_aliases_resolve():
    assert backends.canonical("naive") == "allgather_reducescatter"
    assert backends.canonical("flashinfer_all2allv") == "flashinfer_nvlink_two_sided"
    with pytest.raises(ValueError, match="already registered"):
        backends.register(dataclasses.replace(LOOPBACK, name="allgather_reducescatter"))
    with pytest.raises(ValueError, match="'naive' is already registered"):
        backends.register(dataclasses.replace(LOOPBACK, aliases=("naive",)))
    with pytest.raises(backends.UnknownBackend, match="expected one of allgather_reducescatter"):
        backends.get("no_such_backend")
    with pytest.raises(ValueError, match="sources='tp'"):
        dataclasses.replace(LOOPBACK, sources="tp")


def test_entry_point_registers_a_backend(monkeypatch):
    """A package's ``vllm_ep_kit.backends`` entry point adds its backend on first lookup."""
    from vllm_ep_kit.backends import registry

    class Point:
        name = TOY

        def load(self):
            return lambda: LOOPBACK

    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(
        registry,
        "entry_points",
        lambda group: [Point()] if group == registry.ENTRY_POINT_GROUP else [],
    )
    try:
        assert backends.get(TOY) is LOOPBACK
    finally:
        backends.unregister(TOY)


def test_managers_are_named_by_their_backend(toy):
    """The EP-group tests find vLLM's managers through the registry: the two FlashInfer
    NVLink backends, by name or alias; anything else is a one-line error naming them."""
    from vllm_ep_kit.backends.mnnvl import manager_backend_names, manager_transport

    names = manager_backend_names()
    assert names == ["flashinfer_nvlink_one_sided", "flashinfer_nvlink_two_sided"]
    assert [manager_transport(n).MANAGER_CLASS for n in names] == [
        "FlashInferNVLinkOneSidedManager",
        "FlashInferNVLinkTwoSidedManager",
    ]
    alias = manager_transport("flashinfer_all2allv")
    assert alias is manager_transport("flashinfer_nvlink_two_sided")
    assert [manager_transport(n).GROWS_ON_INITIALIZE for n in names] == [True, False]
    for other in ("allgather_reducescatter", TOY):
        with pytest.raises(
            ValueError, match=f"{other!r}: not driven through a vLLM manager; expected one of"
        ) as info:
            manager_transport(other)
        assert "\n" not in str(info.value)
