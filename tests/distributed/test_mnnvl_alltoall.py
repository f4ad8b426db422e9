"""vLLM's FlashInfer NVLink all-to-all managers (upstream PRs 35241 and 40893).

CPU part (runs in CI over gloo): vLLM's real managers, with only FlashInfer's
MNNVL allocation layer replaced by a recorder, must put the MNNVL workspace on
the EP group (DP x PCP x TP), allocate once under repeated ``ensure`` calls,
and allocate again after cleanup.  ``test_ep_group_check_fails_when_fix_reverted``
runs the same check against the pre-fix behaviour and requires it to fail.

GPU part: the same lifecycle with FlashInfer's real allocator (device memory
measured), and dispatch + combine through the real kernels compared with the
reference (see ``vllm_ep_kit.reference``).
"""

from __future__ import annotations

import itertools

import pytest

from tests.drivers.flashinfer_direct import (
    alternating_layers,
    default_cases,
    format_cases,
    graph_backends,
    graph_shapes,
    rank_graph_replays,
    rank_moe_ep_roundtrip,
    rank_one_sided_roundtrip,
    rank_two_sided_roundtrip,
)
from tests.drivers.flashinfer_emulator import (
    rank_emulator_vs_kernels,
    rank_two_sided_emulator_vs_kernels,
)
from tests.drivers.flashinfer_recorder import (
    FlashInferAllocationRecorder,
    growth_findings,
    workspace_group_findings,
)
from tests.drivers.manager_roundtrip import (
    lifecycle_findings,
    rank_manager_lifecycle,
    rank_manager_roundtrip,
    release_findings,
)
from tests.drivers.mnnvl_managers import (
    build_manager,
    ensure_workspace,
    manager_backends,
    mnnvl_on_dp_group,
)
from vllm_ep_kit import backends as registry
from vllm_ep_kit.backends import flashinfer_one_sided, flashinfer_two_sided
from vllm_ep_kit.backends.mnnvl import manager_transport
from vllm_ep_kit.commands.check import plan_cases, token_counts
from vllm_ep_kit.harness import run_ranks
from vllm_ep_kit.patches.flashinfer_managers import WorkspaceShape
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.moe import RoutingCase

MANAGER_BACKENDS = manager_backends()
LAYOUTS = [ParallelLayout(tp=1, dp=2), ParallelLayout(tp=2, dp=2), ParallelLayout(tp=1, dp=4)]
LAYOUT_IDS = [layout.describe() for layout in LAYOUTS]


# ----------------------------------------------------------------- rank functions

LIFECYCLE = ("ensure", "ensure", "ensure", "cleanup", "ensure")
# workspace (+ prepare workspace)
ALLOCATIONS_PER_INIT = {flashinfer_two_sided.NAME: 2, flashinfer_one_sided.NAME: 1}


def recorded_lifecycle(all2all, steps, reverted_fix=False):
    """Run manager steps under the recorder; report allocations after each step."""
    import contextlib

    from vllm.distributed import parallel_state as ps

    recorder = FlashInferAllocationRecorder()
    mutant = mnnvl_on_dp_group() if reverted_fix else contextlib.nullcontext()
    history = []
    with recorder.installed(), mutant:
        manager = build_manager(all2all)
        for step in steps:
            if step == "ensure":
                ensure_workspace(manager, all2all)
            else:
                manager.cleanup()
            history.append(
                {
                    "step": step,
                    "allocations": len(recorder.allocations),
                    "initialized": bool(manager.initialized),
                }
            )
        manager.cleanup()
    return {
        "history": history,
        "findings": workspace_group_findings(recorder.allocations, list(ps.get_ep_group().ranks)),
    }


# Layers of one model initialising one shared one-sided workspace, in model order: vLLM
# grows it to the union of their payloads and never shrinks it (upstream's newer
# workspace-grow test; vLLM PR 40893's follow-ups).
GROWTH_LAYERS = (
    ("layer 1 (64 tokens, bf16 rows of 256)", WorkspaceShape()),
    (
        "layer 2 (narrower: 32 tokens, bf16 rows of 128)",
        WorkspaceShape(max_num_tokens=32, hidden_size=128, x_bytes_per_token=256),
    ),
    (
        "layer 3 (fp8 rows of 512 with block scales)",
        WorkspaceShape(hidden_size=512, x_bytes_per_token=512, x_sf_bytes_per_token=16),
    ),
    ("layer 4 (128 tokens)", WorkspaceShape(max_num_tokens=128)),
    ("layer 1 again", WorkspaceShape()),
    (
        "layer 5 (bf16 rows of 256 plus 1024 payload bytes)",
        WorkspaceShape(x_sf_bytes_per_token=1024),
    ),
)
GROWING_BACKENDS = [
    name for name in MANAGER_BACKENDS if manager_transport(name).GROWS_ON_INITIALIZE
]


def recorded_growth(all2all, manager_per_layer=False):
    """Initialise the layers of GROWTH_LAYERS in order through vLLM's manager under the
    recorder; ``manager_per_layer`` is the negative control (each layer its own workspace,
    sized to itself: a narrower layer shrinks what the others use)."""
    recorder = FlashInferAllocationRecorder()
    steps = []
    with recorder.installed():
        manager = build_manager(all2all)
        for label, shape in GROWTH_LAYERS:
            if manager_per_layer:
                manager.cleanup()
                manager = build_manager(all2all)
            ensure_workspace(manager, all2all, shape)
            made = [a for a in recorder.allocations if a.kind == "one_sided"]
            steps.append({"label": label, "shape": shape, "allocations": list(made)})
        manager.cleanup()
    return {
        "allocations": [len(step["allocations"]) for step in steps],
        "findings": growth_findings(steps),
    }


def rank_lifecycle(ctx, all2all, steps, reverted_fix=False):
    """One manager's ``steps`` under the recorder on this rank, beside the rank's EP and DP
    groups as vLLM built them."""
    from vllm.distributed import parallel_state as ps

    return {
        "ep_ranks": list(ps.get_ep_group().ranks),
        "dp_ranks": list(ps.get_dp_group().ranks),
        **recorded_lifecycle(all2all, steps, reverted_fix),
    }


def on_gloo_ranks(fn, layout: ParallelLayout, *args) -> list:
    """``fn(ctx, *args)`` on every rank of ``layout`` over gloo, with vLLM's groups built."""
    return run_ranks(fn, layout.world_size, *args, backend="gloo", layout=layout, timeout_s=240)


def lifecycle(all2all, layout: ParallelLayout, steps, reverted_fix=False) -> list[dict]:
    return on_gloo_ranks(rank_lifecycle, layout, all2all, steps, reverted_fix)


def rank_growth(ctx, all2all, manager_per_layer=False):
    return recorded_growth(all2all, manager_per_layer)


def growth(all2all, layout: ParallelLayout, manager_per_layer=False) -> list[dict]:
    return on_gloo_ranks(rank_growth, layout, all2all, manager_per_layer)


# ----------------------------------------------------------------- CPU tests


@pytest.mark.flashinfer
def test_flashinfer_comm_api_present():
    """The FlashInfer names vLLM's managers use exist in the installed FlashInfer."""
    import flashinfer.comm as comm
    from flashinfer.comm import mnnvl, trtllm_alltoall, trtllm_moe_alltoall

    assert hasattr(comm, "Mapping")
    assert hasattr(mnnvl, "MnnvlConfig") and hasattr(mnnvl, "CommBackend")
    for name in ("get_moe_workspaces", "get_moe_prepare_workspace"):
        assert callable(getattr(trtllm_alltoall.MnnvlMoe, name))
    for name in ("dispatch", "combine"):
        assert callable(getattr(trtllm_moe_alltoall.MoeAlltoAll, name))
    assert callable(trtllm_moe_alltoall.moe_a2a_get_workspace_size_per_rank)


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_workspace_spans_ep_group(all2all, layout):
    """Every workspace a lifecycle allocates (first use, repeats, re-initialise after a
    cleanup) spans the rank's EP group as vLLM built it."""
    for rank, result in enumerate(lifecycle(all2all, layout, LIFECYCLE)):
        assert result["ep_ranks"] == layout.ep_group_ranks(rank)
        assert result["findings"] == [], f"rank {rank}: {result['findings']}"


@pytest.mark.parametrize("wrong", ["group", "rows", "mapping"])
def test_each_workspace_fact_is_checked_on_its_own(wrong):
    """Exactly one fact of an otherwise right allocation is wrong, so each check is seen on
    its own (with the group wrong too, the group check would hide the Mapping extent's)."""
    from tests.drivers.flashinfer_recorder import Allocation

    ep_ranks = [0, 1, 2, 3]
    alloc = Allocation(
        kind="one_sided",
        comm_size=4,
        group_ranks=list(ep_ranks),
        mapping_world_size=4,
        mapping_ep_extent=4,
        rows=4,
    )
    assert workspace_group_findings([alloc], ep_ranks) == []
    if wrong == "group":
        alloc.group_ranks = [0, 2, 4, 6]
    elif wrong == "rows":
        alloc.rows = 2
    else:
        alloc.mapping_ep_extent = 2
    (finding,) = workspace_group_findings([alloc], ep_ranks)
    assert {
        "group": "MNNVL communicator spans ranks [0, 2, 4, 6]",
        "rows": "workspace has 2 rows",
        "mapping": "Mapping spans 2 ranks, EP size is 4",
    }[wrong] in finding


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_ep_group_check_fails_when_fix_reverted(all2all):
    """Negative control: the check above must catch the pre-fix DP-group workspace.

    With TP=2 x DP=2 the DP group has 2 ranks and the EP group 4; vLLM before
    the fix sized the MNNVL workspace to the former.
    """
    for result in lifecycle(all2all, ParallelLayout(tp=2, dp=2), ("ensure",), reverted_fix=True):
        assert result["dp_ranks"] != result["ep_ranks"]
        findings = " | ".join(result["findings"])
        assert f"MNNVL communicator spans ranks {result['dp_ranks']}" in findings
        assert "workspace has 2 rows, the kernel asserts one per EP rank (4)" in findings


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_ensure_initialized_allocates_once(all2all):
    per_init = ALLOCATIONS_PER_INIT[all2all]
    for result in lifecycle(all2all, ParallelLayout(tp=1, dp=2), ("ensure",) * 3):
        assert [h["allocations"] for h in result["history"]] == [per_init] * 3


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_reinitialize_after_cleanup(all2all):
    per_init = ALLOCATIONS_PER_INIT[all2all]
    steps = ("ensure", "cleanup", "ensure")
    for rank, result in enumerate(lifecycle(all2all, ParallelLayout(tp=1, dp=2), steps)):
        history = result["history"]
        assert [h["initialized"] for h in history] == [True, False, True], f"rank {rank}"
        assert [h["allocations"] for h in history] == [per_init, per_init, 2 * per_init]


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("all2all", GROWING_BACKENDS)
def test_one_sided_workspace_grows_to_the_union_of_layers(all2all, layout):
    """Each layer's initialise leaves a workspace that holds every layer so far; a layer
    it already holds allocates nothing; both branches are taken by GROWTH_LAYERS."""
    for rank, result in enumerate(growth(all2all, layout)):
        assert result["findings"] == [], f"rank {rank}: {result['findings']}"
        counts = result["allocations"]
        grew = sum(b > a for a, b in itertools.pairwise(counts))
        kept = sum(b == a for a, b in itertools.pairwise(counts))
        assert grew >= 1 and kept >= 1, f"rank {rank}: allocations per layer {counts}"


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("all2all", GROWING_BACKENDS)
def test_workspace_growth_check_catches_a_shrunk_workspace(all2all):
    """Negative control: a workspace per layer, sized to that layer alone, must fail."""
    per_layer = growth(all2all, ParallelLayout(tp=1, dp=2), manager_per_layer=True)
    for rank, result in enumerate(per_layer):
        findings = " | ".join(result["findings"])
        assert (
            "after layer 2 (narrower: 32 tokens, bf16 rows of 128): the workspace no "
            "longer holds layer 1"
        ) in findings, f"rank {rank}: {findings}"


# ------------------------------------ vLLM's FlashInfer prepare/finalize classes (CPU)


def prepare_finalize_steps(layout: ParallelLayout) -> list[RoutingCase]:
    """Forward steps through one layer: every DP rank with tokens, then DP rank 0 empty,
    then the last one empty (counts per DP rank; TP ranks of a DP rank share its tokens)."""
    dp = layout.dp
    return [
        RoutingCase(tokens=tuple(5 + 2 * i for i in range(dp))),
        RoutingCase(tokens=(0,) + tuple(3 + i for i in range(dp - 1))),
        RoutingCase(tokens=tuple(6 + i for i in range(dp - 1)) + (0,)),
    ]


def rank_prepare_finalize(ctx, all2all, cases, reduces_twice=False):
    from tests.drivers.prepare_finalize_check import rank_prepare_finalize_steps

    return rank_prepare_finalize_steps(ctx, all2all, cases, reduces_twice=reduces_twice)


def prepare_finalize(all2all, layout: ParallelLayout, reduces_twice=False) -> list[dict]:
    """The steps of ``prepare_finalize_steps`` through vLLM's class for ``all2all`` (or its
    reduce-twice control) on every rank of ``layout``."""
    steps = prepare_finalize_steps(layout)
    return on_gloo_ranks(rank_prepare_finalize, layout, all2all, steps, reduces_twice)


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_prepare_finalize_vs_oracle(all2all, layout):
    """vLLM's FlashInfer prepare/finalize (one- and two-sided), driven as its MoE runner
    drives a layer (late all-reduce by the runner's own rule), over FlashInfer's kernels
    emulated on CPU: each token dispatched exactly once to each owner rank, output within
    bf16 of the oracle, on every step including a DP rank with no tokens."""
    steps = prepare_finalize_steps(layout)
    assert any(0 in case.tokens for case in steps)
    for rank, shipped in enumerate(prepare_finalize(all2all, layout)):
        assert shipped["output_is_reduced"] is True
        assert (shipped["dispatches"], shipped["combines"]) == (len(steps), len(steps))
        assert shipped["allocations"] == ALLOCATIONS_PER_INIT[all2all], (
            f"rank {rank}: one layer, one set of workspaces"
        )
        for step in shipped["steps"]:
            where = f"rank {rank}, {step.describe()}"
            assert step.dispatch_exact, f"{where}: {step.note}"
            step.assert_close(where)
            assert step.detail["scale"] in (None, pytest.approx(1.0, rel=0.02))


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_prepare_finalize_check_catches_a_double_reduce(all2all):
    """Negative control (upstream PR 41382): the class saying its output is not reduced
    makes the runner all-reduce over TP what combine already summed: at TP=2 every step
    with tokens on the rank must fail, the output ``tp`` times the oracle's."""
    layout = ParallelLayout(tp=2, dp=2)
    for rank, control in enumerate(prepare_finalize(all2all, layout, reduces_twice=True)):
        assert control["output_is_reduced"] is False
        for step in control["steps"]:
            if not len(step.want):
                continue  # nothing of this rank's to get wrong
            where = f"rank {rank}, {step.describe()}"
            assert step.dispatch_exact, f"{where}: {step.note}"
            with pytest.raises(AssertionError, match="Mismatched elements"):
                step.assert_close(where)
            assert step.detail["scale"] == pytest.approx(layout.tp, rel=0.02)


@pytest.mark.vllm
@pytest.mark.flashinfer
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_a_double_reduce_is_invisible_at_tp_1(all2all):
    """Why the control runs at TP > 1: at TP=1 the runner's extra all-reduce spans one rank,
    so the same class passes every step."""
    for rank, control in enumerate(
        prepare_finalize(all2all, ParallelLayout(tp=1, dp=2), reduces_twice=True)
    ):
        assert control["output_is_reduced"] is False
        for step in control["steps"]:
            where = f"rank {rank}, {step.describe()}"
            assert step.dispatch_exact, f"{where}: {step.note}"
            step.assert_close(where)


# ----------------------------------------------------------------- dispatch + combine (AGRS)

AGRS_LAYOUTS = [ParallelLayout(tp=1, dp=2), ParallelLayout(tp=1, dp=4), ParallelLayout(tp=2, dp=2)]


def rank_agrs_check(ctx, cases):
    """Every case through vLLM's ``AgRsAll2AllManager`` on this rank."""
    from vllm_ep_kit.backends.exchange import rank_cases

    return rank_cases(ctx, registry.get("allgather_reducescatter"), cases)


def rank_agrs_with_local_only_combine(ctx, cases):
    """A mutant combine that keeps this rank's partial and never sums the others'."""
    from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

    from vllm_ep_kit.patches.base import swapped

    def combine(self, hidden_states, is_sequence_parallel=False):
        group = self._get_comm_group(is_sequence_parallel)
        sizes = self._get_sizes(0, group) if self.dp_world_size > 1 else None
        start = sum(sizes[: group.rank_in_group])
        return hidden_states[start : start + sizes[group.rank_in_group]]

    with swapped(AgRsAll2AllManager, combine=combine):  # restored: a pooled rank runs on
        return rank_agrs_check(ctx, cases)


@pytest.mark.vllm
@pytest.mark.parametrize("layout", AGRS_LAYOUTS, ids=[lay.describe() for lay in AGRS_LAYOUTS])
def test_agrs_dispatch_combine_matches_reference(layout):
    """vLLM's AGRS manager vs the oracle: even, uneven and zero-token ranks, bf16 and fp32."""
    cases = plan_cases(layout, ("bf16", "fp32"))
    results = on_gloo_ranks(rank_agrs_check, layout, cases)
    assert token_counts("zero", layout.dp) in {c.tokens for c in cases}  # a rank with none
    for rank, per_rank in enumerate(results):
        assert len(per_rank) == len(cases)
        for case, result in zip(cases, per_rank, strict=True):
            assert result.dispatch_exact, f"rank {rank} {case.describe()}: dispatch differs"
            assert result.passed, f"rank {rank} {case.describe()}: max error {result.max_error}"


@pytest.mark.vllm
def test_agrs_check_catches_a_combine_that_drops_peers():
    """Negative control: the check must fail when combine loses other ranks' experts."""
    layout = ParallelLayout(tp=1, dp=2)
    cases = plan_cases(layout, ("fp32",), ("uneven",))
    results = on_gloo_ranks(rank_agrs_with_local_only_combine, layout, cases)
    for per_rank in results:
        assert [r.dispatch_exact for r in per_rank] == [True]  # dispatch untouched
        assert [r.passed for r in per_rank] == [False]
        assert per_rank[0].max_error > 0.1
        assert "Mismatched elements" in per_rank[0].note  # which elements, by how much


def assert_every_case_passed(results, cases) -> None:
    """Every rank returned one result per case, and each passed (the result says why not)."""
    for rank, per_rank in enumerate(results):
        assert len(per_rank) == len(cases), f"rank {rank}: {len(per_rank)} results"
        for case, result in zip(cases, per_rank, strict=True):
            assert result.passed, f"rank {rank} {case.describe()}: {result}"


# ----------------------------------------------------------------- FlashInfer kernels (GPU)


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.parametrize(
    "world",
    [
        pytest.param(2, marks=pytest.mark.gpus(1), id="2ranks"),
        pytest.param(4, marks=pytest.mark.gpus(4), id="4ranks"),
    ],
)
def test_flashinfer_one_sided_kernel_vs_oracle(world):
    """FlashInfer's MoeAlltoAll (real kernels) dispatch + combine equals the fp32 oracle.

    Ranks are placed on GPU ``rank % device_count``: 2 ranks may share one GPU.
    """
    cases = default_cases(world) + format_cases(world)
    results = run_ranks(rank_one_sided_roundtrip, world, cases, backend="gloo", timeout_s=600)
    assert_every_case_passed(results, cases)


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
def test_flashinfer_kernel_check_catches_double_counting():
    """Negative control: ignoring expert ownership must fail the same comparison."""
    cases = [RoutingCase(tokens=(32, 32), hidden=256, num_experts=16, top_k=4, dtype="fp32")]
    results = run_ranks(rank_one_sided_roundtrip, 2, cases, True, backend="gloo", timeout_s=600)
    assert not any(r.passed for per_rank in results for r in per_rank)


GRAPH_ROUNDS = 3


def graph_rows_by_kind(rows) -> tuple[list, list]:
    """(eager warm-up rows, replay rows) of one rank's graph results."""
    return (
        [r for r in rows if r.layout.endswith("eager warm-up")],
        [r for r in rows if " replay " in r.layout],
    )


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
@pytest.mark.parametrize("dtype", ["bf16", "fp8", "mxfp8", "nvfp4"])
@pytest.mark.parametrize("kernels", sorted(graph_backends()))
def test_kernels_under_cuda_graph_replay(kernels, dtype):
    """FlashInfer's one-sided ``MoeAlltoAll`` and two-sided ``MnnvlMoe`` captured in CUDA
    graphs as vLLM captures a forward: four batch shapes (even, uneven, each rank empty in
    turn) on one set of buffers, each dispatch + oracle experts + combine captured once,
    then replayed in turn for three rounds with new tokens and routing each time, with no
    host sync between replays.  Every replay must equal the fp32 oracle of its own tokens
    (quantised formats: with their block scales).  Two ranks share the GPU."""
    shapes = graph_shapes(dtype)
    results = run_ranks(
        rank_graph_replays, 2, kernels, shapes, GRAPH_ROUNDS, backend="gloo", timeout_s=600
    )
    assert_graph_rows_pass(results, shapes, GRAPH_ROUNDS)


def assert_graph_rows_pass(results, shapes, rounds) -> None:
    """Every rank has a warm-up row per shape and a row per replay, and each passed."""
    for rank, rows in enumerate(results):
        warmups, replays = graph_rows_by_kind(rows)
        assert (len(warmups), len(replays)) == (len(shapes), len(shapes) * rounds)
        for row in rows:
            print(
                f"rank {rank} {row.layout} {row.dtype} {row.tokens}: error "
                f"{row.max_error:.4f} {row.seconds * 1e3:.2f} ms {row.note}"
            )
            assert row.passed, f"rank {rank} {row.layout} {row.tokens}: {row.note}"


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
@pytest.mark.parametrize("kernels", sorted(graph_backends()))
def test_alternating_layer_widths_share_one_workspace(kernels):
    """Upstream's workspace-growth scenario on the kernels: NVFP4, bf16 (an MTP head 3.5x
    wider), fp8 and MXFP8 layers captured on one set of buffers sized for the union of
    their payloads, then replayed alternately with new tokens: every layer's dispatch and
    combine stays exact against the oracle, the narrow layers after the wide ones too."""
    layers = alternating_layers()
    results = run_ranks(
        rank_graph_replays, 2, kernels, layers, GRAPH_ROUNDS, backend="gloo", timeout_s=600
    )
    assert_graph_rows_pass(results, layers, GRAPH_ROUNDS)


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
@pytest.mark.parametrize("kernels", sorted(graph_backends()))
def test_graph_replay_check_catches_stale_inputs(kernels):
    """Negative control: new tokens not copied into the captured inputs (a graph replaying
    the routing it was captured with) must fail every replay on a rank that has tokens;
    the eager warm-ups still pass."""
    shapes = graph_shapes("bf16")
    by_tokens = {str(list(s.tokens)): s for s in shapes}
    results = run_ranks(
        rank_graph_replays, 2, kernels, shapes, 2, True, backend="gloo", timeout_s=600
    )
    for rank, rows in enumerate(results):
        warmups, replays = graph_rows_by_kind(rows)
        assert all(r.passed for r in warmups)
        assert len(replays) == 2 * len(shapes)
        for row in replays:
            has_tokens = by_tokens[row.tokens].tokens[rank] > 0
            assert row.passed is not has_tokens, f"rank {rank} {row.layout}: {row}"


@pytest.mark.parametrize(
    "kernels, shapes, rounds, error",
    [
        ("flashinfer_nvlink_one_sided", [], 1, "expected at least one"),
        (
            "flashinfer_nvlink_one_sided",
            graph_shapes("bf16")[:1] + [RoutingCase(tokens=(1, 1), top_k=2)],
            1,
            "shapes differ",
        ),
        (
            "flashinfer_nvlink_two_sided",
            [RoutingCase(tokens=(4, 4, 4))],
            1,
            "the world has 2 ranks",
        ),
        ("flashinfer_nvlink_one_sided", graph_shapes("bf16"), 0, "rounds=0"),
        ("deepep_low_latency", graph_shapes("bf16"), 1, "backend_name='deepep_low_latency'"),
    ],
)
def test_graph_replays_refuse_bad_input(kernels, shapes, rounds, error):
    """Refused in one line before any GPU work (runs on CPU)."""
    from types import SimpleNamespace

    with pytest.raises(ValueError, match=error):
        rank_graph_replays(SimpleNamespace(world_size=2), kernels, shapes, rounds)


def test_graph_replays_refuse_a_host_without_gpus():
    """On a CPU-only host the kernels' transport says so in one line (not a modulo by 0)."""
    from types import SimpleNamespace

    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: the refusal is for hosts without one")
    with pytest.raises(RuntimeError, match="need a CUDA GPU, none is visible"):
        rank_graph_replays(
            SimpleNamespace(world_size=2, rank=0),
            "flashinfer_nvlink_one_sided",
            graph_shapes("bf16"),
        )


def assert_emulator_matches(results, cases) -> None:
    """Every rank compared every case, and the kernels and the emulator agreed on each."""
    for rank, per_rank in enumerate(results):
        assert len(per_rank) == len(cases)
        for row in per_rank:
            print(f"rank {rank} {row}")
            assert row["same_rows"], f"rank {rank} {row['case']}: received rows differ"
            assert row["combine_difference"] <= 2e-2, f"rank {rank} {row}"


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
def test_kernel_emulator_matches_flashinfer_kernels():
    """The CPU stand-in the prepare/finalize tests run on moves what FlashInfer's
    ``MoeAlltoAll`` kernels move: the same valid rows per source block (any order), the
    same number of rows marked invalid, the same combine of the oracle's partials; every
    default case (uneven, an empty rank, fp32, fp8 with its block scales), two ranks
    on a GPU."""
    cases = default_cases(2) + format_cases(2)
    results = run_ranks(rank_emulator_vs_kernels, 2, cases, backend="gloo", timeout_s=600)
    assert_emulator_matches(results, cases)


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
def test_two_sided_kernel_emulator_matches_flashinfer_kernels():
    """The two-sided stand-in against FlashInfer's ``MnnvlMoe`` kernels: the same received
    rows (packed, any order; ids of experts the rank lacks as ``slot_count``), the same rows
    marked invalid, the same combine.  Two ranks share one GPU here (passed on 1x H200)."""
    cases = default_cases(2) + format_cases(2)
    results = run_ranks(rank_two_sided_emulator_vs_kernels, 2, cases, backend="gloo", timeout_s=600)
    assert_emulator_matches(results, cases)


def needs_moe_ep():
    import importlib.util

    if importlib.util.find_spec("flashinfer.moe_ep") is None:
        pytest.skip(
            "the installed FlashInfer has no flashinfer.moe_ep (added in 0.7.2; "
            "vLLM 0.33's one-sided manager is built on it)"
        )


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.nvlink
@pytest.mark.parametrize(
    "world",
    [
        pytest.param(2, marks=pytest.mark.gpus(2), id="2ranks"),
        pytest.param(4, marks=pytest.mark.gpus(4), id="4ranks"),
    ],
)
def test_flashinfer_moe_ep_one_sided_vs_oracle(world):
    """FlashInfer's ``flashinfer.moe_ep`` one-sided communication (``NVLinkOneSidedAlltoAll``,
    what vLLM 0.33's manager holds: its own dispatch, combine and flattened received rows)
    equals the fp32 oracle, with the control that ignoring ownership fails in the same run.

    Unlike ``MoeAlltoAll`` it needs NVLink (one GPU per rank): on 1x H200 its collective
    platform check refuses every rank ("NVLink backends are not supported", seen on 1x
    H200)."""
    needs_moe_ep()
    cases = default_cases(world)
    results = run_ranks(rank_moe_ep_roundtrip, world, cases, backend="gloo", timeout_s=600)
    assert_every_case_passed(results, cases)
    control = [RoutingCase(tokens=(32,) * world, hidden=256, num_experts=16, top_k=4, dtype="fp32")]
    results = run_ranks(rank_moe_ep_roundtrip, world, control, True, backend="gloo", timeout_s=600)
    assert not any(r.passed for per_rank in results for r in per_rank)


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
def test_flashinfer_two_sided_kernel_check_catches_double_counting():
    """Negative control for the two-sided kernels: ignoring expert ownership must fail."""
    cases = [RoutingCase(tokens=(32, 32), hidden=512, num_experts=16, top_k=4, dtype="fp32")]
    results = run_ranks(rank_two_sided_roundtrip, 2, cases, True, backend="gloo", timeout_s=600)
    assert not any(r.passed for per_rank in results for r in per_rank)


@pytest.mark.flashinfer
@pytest.mark.mnnvl_handles
@pytest.mark.handle_exchange
@pytest.mark.gpus(1)
def test_flashinfer_two_sided_kernel_vs_oracle():
    """FlashInfer's MnnvlMoe alltoallv (real kernels) prepare + dispatch + combine vs the
    oracle.  Two ranks may share one GPU (measured on 1x H200, docs/gpu-evidence.md)."""
    cases = default_cases(2) + format_cases(2)
    results = run_ranks(rank_two_sided_roundtrip, 2, cases, backend="gloo", timeout_s=600)
    assert_every_case_passed(results, cases)


# ----------------------------------------------------------------- vLLM's managers on GPUs

# DP mode (EP = DP) and TP mode (EP = TP, DP = 1) on 2 GPUs; TP=2 x DP=2 needs 4.
GPU_LAYOUTS = [
    pytest.param(ParallelLayout(tp=1, dp=2), marks=pytest.mark.gpus(2), id="tp1dp2"),
    pytest.param(ParallelLayout(tp=2, dp=1), marks=pytest.mark.gpus(2), id="tp2dp1"),
    pytest.param(ParallelLayout(tp=2, dp=2), marks=pytest.mark.gpus(4), id="tp2dp2"),
]
MANAGER_GPU_MARKS = (
    pytest.mark.vllm,
    pytest.mark.flashinfer,
    pytest.mark.mnnvl_handles,
    pytest.mark.handle_exchange,
    pytest.mark.nvlink,
)


def gpu_manager_test(fn):
    for mark in MANAGER_GPU_MARKS:
        fn = mark(fn)
    return fn


# The lifecycle tests measure device memory and FlashInfer's process-wide workspace caches,
# which a pooled rank would carry over from earlier tests.
FRESH_FOR_DEVICE_MEMORY = pytest.mark.fresh_ranks(
    "measures device memory and FlashInfer's class-level workspace caches, which a pooled "
    "rank carries over from earlier tests"
)


def run_on_gpus(fn, layout: ParallelLayout, all2all: str, *args, timeout_s: float = 420):
    """``timeout_s`` covers a first FlashInfer JIT build (up to ~200 s measured)."""
    return run_ranks(
        fn,
        layout.world_size,
        all2all,
        *args,
        backend="nccl",
        layout=layout,
        all2all_backend=all2all,
        timeout_s=timeout_s,
    )


@gpu_manager_test
@FRESH_FOR_DEVICE_MEMORY
@pytest.mark.parametrize("layout", GPU_LAYOUTS)
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_vllm_manager_lifecycle_on_gpus(all2all, layout):
    """Initialise over NVLink, ensure x3 (no second allocation), cleanup, re-initialise:
    one workspace row per EP rank, no growth across re-initialisation (cudaMemGetInfo)."""
    results = run_on_gpus(rank_manager_lifecycle, layout, all2all)
    for rank, result in enumerate(results):
        assert result["ep_size"] == layout.ep_size
        assert lifecycle_findings(result) == [], f"rank {rank}: {result}"


@gpu_manager_test
@pytest.mark.gpus(2)
@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured on 2x H200: FlashInfer keeps MNNVL workspaces "
        "in class-level caches (MnnvlMoe.moe_workspace for two-sided, MoeAlltoAll."
        "_WORKSPACE_CACHE keyed by size for one-sided); vLLM's cleanup drops only its own "
        "references, so memory stays in use, and a one-sided workspace grown to a larger size "
        "keeps the smaller one too"
    ),
)
@FRESH_FOR_DEVICE_MEMORY
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_vllm_manager_cleanup_returns_device_memory(all2all):
    """After the last cleanup, device memory is back to its level before the first ensure."""
    results = run_on_gpus(rank_manager_lifecycle, ParallelLayout(tp=1, dp=2), all2all)
    for rank, result in enumerate(results):
        assert release_findings(result) == [], f"rank {rank}: {result['steps'][-1]}"


@gpu_manager_test
@pytest.mark.gpus(2)
@FRESH_FOR_DEVICE_MEMORY
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_vllm_manager_lifecycle_check_fails_when_fix_reverted(all2all):
    """Negative control on real allocations: TP mode has a 1-rank DP group, so the
    pre-fix DP-group communicator gives a 1-row workspace for a 2-rank EP group
    (the one-sided manager's FlashInfer constructor refuses it outright)."""
    results = run_on_gpus(
        rank_manager_lifecycle, ParallelLayout(tp=2, dp=1), all2all, True, timeout_s=150
    )
    for result in results:
        assert result["dp_size"] == 1 and result["ep_size"] == 2
        findings = " | ".join(lifecycle_findings(result))
        assert (
            "workspace has 1 rows, EP group has 2 ranks" in findings
            or "workspace first dim must equal ep_size" in findings
        ), result


def manager_cases(all2all: str, ep_size: int) -> list[RoutingCase]:
    """The default cases whose combine payload ``all2all``'s vLLM manager is built for."""
    combine = manager_transport(all2all).COMBINE_DTYPES
    return [c for c in default_cases(ep_size) if combine is None or c.combine_dtype in combine]


@gpu_manager_test
@pytest.mark.parametrize("layout", GPU_LAYOUTS)
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_vllm_manager_dispatch_combine_vs_oracle(all2all, layout):
    """The manager's workspaces + FlashInfer's kernels vs the oracle: bf16 64x2048,
    uneven, a rank with no tokens, fp8 with block scales (two-sided also fp32)."""
    cases = manager_cases(all2all, layout.ep_size)
    results = run_on_gpus(rank_manager_roundtrip, layout, all2all, cases)
    assert_every_case_passed(results, cases)


@gpu_manager_test
@pytest.mark.gpus(2)
@pytest.mark.parametrize("all2all", MANAGER_BACKENDS)
def test_vllm_manager_check_catches_double_counting(all2all):
    """Negative control through the managers: ignoring expert ownership must fail."""
    cases = [RoutingCase(tokens=(32, 32), hidden=512, num_experts=16, top_k=4)]
    results = run_on_gpus(rank_manager_roundtrip, ParallelLayout(tp=1, dp=2), all2all, cases, True)
    assert not any(r.passed for per_rank in results for r in per_rank)
