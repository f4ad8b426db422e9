"""The MoE layer parallel matrix, with sequence-parallel (SP) cases (upstream PR 41299).

Every (backend, activation dtype, layout) cell of ``tests.drivers.moe_layer`` is
either exercised here or skipped with the reason from its tables.  On CPU the
layer runs through vLLM's real parallel state over gloo (2 and 4 ranks): SP
chunking with vLLM's ``sequence_parallel_chunk``, dispatch and combine through
vLLM's ``AgRsAll2AllManager``, the TP all-gather, and the trim of the chunk
padding; experts are the torch SiLU-MLP reference for each rank's experts.
Outputs are compared with the fp32 MoE computed on one process.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.drivers.moe_layer import (
    NOT_APPLICABLE,
    NOT_HERE,
    PARALLEL_COMBOS,
    MoeLayerCell,
    all_cells,
    cell_outcome,
    layer_backends,
    layer_cases,
    rank_moe_layer,
)
from vllm_ep_kit.backends import all_backends
from vllm_ep_kit.backends.forward import TRIM_NONE, TRIM_TO_LOCAL_CHUNK, TRIM_TO_TOKENS
from vllm_ep_kit.backends.vllm_experts import (
    default_impl,
    expert_partial,
    kernels_missing,
    local_expert_map,
    rank_expert_partials,
    rank_fused_moe_layer,
    tolerance_key,
)
from vllm_ep_kit.harness import probes, run_ranks, skip_or_fail
from vllm_ep_kit.reference.layout import ParallelLayout
from vllm_ep_kit.reference.mlp_moe import (
    MlpExperts,
    mlp_moe_partial,
    softmax_topk,
)
from vllm_ep_kit.reference.moe import RoutingCase, source_tokens
from vllm_ep_kit.reference.results import CaseResult

pytestmark = pytest.mark.vllm


def matches_reference(result: CaseResult) -> bool:
    """Whether a result's output passes its own ``assert_close`` (negative controls)."""
    try:
        result.assert_close()
    except AssertionError:
        return False
    return True


def run_cell(backend: str, quant: str, combo: str, trim: str = TRIM_TO_TOKENS) -> list:
    """One cell's cases on every rank of its layout: gloo on CPU, NCCL with one rank per
    GPU on GPUs.

    420 s on GPUs covers a first FlashInfer JIT build (about 200 s measured).
    """
    cell = MoeLayerCell(backend, quant, combo)
    gpus = probes.gpu_count()
    return run_ranks(
        rank_moe_layer,
        cell.layout.world_size,
        cell,
        layer_cases(cell.layout, quant),
        trim,
        backend="nccl" if gpus else "gloo",
        layout=cell.layout,
        all2all_backend=cell.spec.vllm_name,
        timeout_s=420 if gpus else 300,
    )


@pytest.mark.parametrize("combo", sorted(PARALLEL_COMBOS))
@pytest.mark.parametrize("backend", sorted(b.name for b in layer_backends()))
def test_sp_rule_matches_vllm(backend, combo):
    """The table's SP verdict equals vLLM's ``ParallelConfig.use_sequence_parallel_moe``."""
    from vllm.config import ParallelConfig

    layout = PARALLEL_COMBOS[combo]
    config = ParallelConfig(
        tensor_parallel_size=layout.tp,
        data_parallel_size=layout.dp,
        enable_expert_parallel=layout.enable_ep,
        all2all_backend=backend,
        distributed_executor_backend="mp",
    )
    cell = MoeLayerCell(backend, "bf16", combo)
    assert bool(config.use_sequence_parallel_moe) == cell.is_sequence_parallel


def test_table_names_only_known_backends_and_has_an_sp_layout():
    known = {b.name for b in all_backends()}
    assert {b.name for b in layer_backends()} <= known
    sp = [name for name, layout in PARALLEL_COMBOS.items() if layout.is_sequence_parallel]
    assert sp == ["tp2-dp2-ep-sp"]
    assert PARALLEL_COMBOS["tp2-dp2-ep-sp"].ep_size > PARALLEL_COMBOS["tp2-dp2-ep-sp"].tp


@pytest.mark.parametrize("cell", all_cells(), ids=lambda c: c.id)
def test_moe_layer_cell(cell):
    """Each cell: run and match the fp32 reference, or skip with the table's reason."""
    kind, reason = cell_outcome(cell, probes.gpu_count())
    if kind == NOT_APPLICABLE:
        pytest.skip(reason)
    if kind:
        skip_or_fail(reason)
    for rank, per_rank in enumerate(run_cell(cell.backend, cell.quant, cell.combo)):
        for result in per_rank:
            result.assert_close(f"rank {rank}, {result.describe()}, {result.detail}")


SP_CONTROL_BACKENDS = ["allgather_reducescatter", "flashinfer_nvlink_one_sided"]


def sp_control_rows(backend: str, trim: str) -> list:
    """Runs wherever the backend's SP cell runs: AGRS over gloo on CPU hosts (on GPUs it
    needs vLLM's PyNccl), FlashInfer's one-sided all-to-all on 4 GPUs."""
    kind, reason = cell_outcome(MoeLayerCell(backend, "bf16", "tp2-dp2-ep-sp"), probes.gpu_count())
    if kind:
        skip_or_fail(reason)
    return [r for per_rank in run_cell(backend, "bf16", "tp2-dp2-ep-sp", trim) for r in per_rank]


@pytest.mark.parametrize("backend", SP_CONTROL_BACKENDS)
def test_sp_layer_fails_without_the_trim(backend):
    """Negative control: the SP wrapper without the trim keeps chunk padding rows."""
    uneven = [r for r in sp_control_rows(backend, TRIM_NONE) if len(r.want) % 2]
    assert uneven, "the cases need an odd token count on some rank"
    assert all(len(r.out) == len(r.want) + 1 and not matches_reference(r) for r in uneven)


@pytest.mark.parametrize("backend", SP_CONTROL_BACKENDS)
def test_sp_layer_fails_with_upstreams_trim_to_the_local_chunk(backend):
    """Negative control: upstream's wrapper cuts the gathered output to the local chunk's
    ceil(n / 2) rows, TP rank 0's tokens only; the check must see the missing rows."""
    rows = sp_control_rows(backend, TRIM_TO_LOCAL_CHUNK)
    several = [r for r in rows if len(r.want) >= 2]
    assert several, "the cases need a rank with 2 or more tokens"
    kept = [(r.describe(), len(r.out)) for r in several]
    assert all(len(r.out) == -(-len(r.want) // 2) and not matches_reference(r) for r in several), (
        kept
    )


@pytest.mark.parametrize("ep_size", [1, 2, 4])
def test_expert_map_matches_vllms_linear_placement(ep_size):
    """Our EP expert map is vLLM's ``determine_expert_map`` plus one never-owned slot."""
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map

    for rank in range(ep_size):
        local, ours = local_expert_map(16, ep_size, rank, torch.device("cpu"))
        count, theirs, _ = determine_expert_map(ep_size, rank, 16)
        assert local.numel() == count
        assert int(ours[16]) == -1
        if theirs is None:  # vLLM builds no map without EP: every expert is local, in order
            assert ours[:16].tolist() == list(range(16))
        else:
            assert ours[:16].tolist() == theirs.tolist()


def test_expert_impl_choice_and_dispatch_on_cpu():
    """On CPU the torch reference runs; an unknown impl names the choices."""
    case = RoutingCase(tokens=(9,), num_experts=8, top_k=2, hidden=64)
    tokens, experts = source_tokens(case, 0), MlpExperts(8, 64)
    if not torch.cuda.is_available():
        assert kernels_missing() == "no CUDA GPU"
    assert default_impl(torch.device("cpu")) == "torch"
    torch.testing.assert_close(
        expert_partial("torch", tokens, experts, 2, 1, dtype=torch.float32),
        mlp_moe_partial(tokens, experts, 2, 1),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match=r"impl='triton'.*torch.*vllm"):
        expert_partial("triton", tokens, experts)
    assert tolerance_key("vllm", "fp32") == "tf32"
    assert tolerance_key("torch", "fp32") == "fp32"
    assert tolerance_key("vllm", "bf16") == "bf16-fused"
    assert tolerance_key("vllm", "fp8") == tolerance_key("torch", "fp8") == "fp8"


def test_moe_kernels_probe_reports_why_not():
    """The doctor's probe: on a CPU host it names the missing GPU, never claims success."""
    from vllm_ep_kit.harness import probes as capability

    probe = capability.vllm_moe_kernels()
    assert probe.ok == (kernels_missing() == "")
    if not torch.cuda.is_available():
        assert (probe.ok, probe.detail) == (False, "no CUDA GPU")


def test_softmax_topk_renormalises_the_top_experts():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, 4.0, 0.0]])
    weights, ids = softmax_topk(logits, 2)
    assert ids.tolist() == [[1, 3], [0, 2]] and ids.dtype == torch.int32
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(
        weights[0], torch.softmax(torch.tensor([3.0, 2.0]), dim=0), rtol=1e-5, atol=1e-8
    )


# vLLM's own expert kernels and MoE layer on one GPU.  The multi-rank
# cells above use the same kernels on GPUs where they load (rows record "experts").
EXPERT_DTYPES = ("bf16", "fp32", "fp8")
EXPERT_EP_SIZES = (1, 2, 4)


def expert_partials(dtype: str, ep_size: int) -> list[CaseResult]:
    """Every case x EP rank of ``ep_size`` through ``fused_experts``, on one GPU."""
    cases = [
        RoutingCase(tokens=(n,), num_experts=8, top_k=2, hidden=512, dtype=dtype)
        for n in (0, 1, 7, 64)
    ]
    return run_ranks(
        rank_expert_partials,
        1,
        cases,
        (ep_size,),
        backend="nccl",
        layout=ParallelLayout(),
        timeout_s=420,
    )[0]


@pytest.mark.gpus(1)
@pytest.mark.parametrize("ep_size", EXPERT_EP_SIZES)
@pytest.mark.parametrize("dtype", EXPERT_DTYPES)
def test_vllm_fused_experts_per_ep_rank(dtype, ep_size):
    """vLLM's ``fused_experts`` with an EP expert map, per simulated EP rank, vs fp32."""
    results = expert_partials(dtype, ep_size)
    assert results and {r.detail["ep_size"] for r in results} == {ep_size}
    by_check = {
        check: [r for r in results if r.detail["check"] == check]
        for check in ("partial", "control", "sum")
    }
    assert len(by_check["partial"]) == len(by_check["control"]) == 4 * ep_size
    assert len(by_check["sum"]) == 4
    for result in results:
        print(result.describe(), result.detail["check"], "max error", result.max_error)
    for partial, control in zip(by_check["partial"], by_check["control"], strict=True):
        partial.assert_close()
        # the control: where the two references differ, the output must not match the
        # other one, or the comparison could not tell experts apart
        references_differ = not matches_reference(dataclasses.replace(control, out=partial.want))
        if references_differ:
            assert not matches_reference(control), (
                f"{control.describe()}: the output also matches another rank's reference"
            )
    for total in by_check["sum"]:
        total.assert_close()


@pytest.mark.gpus(1)
@pytest.mark.fresh_ranks("builds a FusedMoE layer, which registers itself in vLLM's config")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_vllm_fused_moe_layer_on_one_gpu(dtype):
    """vLLM's MoE layer (router, weight loader, kernel selection, experts) vs fp32."""
    cases = [
        RoutingCase(tokens=(n,), num_experts=8, top_k=2, hidden=256, dtype=dtype)
        for n in (1, 7, 64, 300)
    ]
    results = run_ranks(
        rank_fused_moe_layer,
        1,
        cases,
        backend="nccl",
        layout=ParallelLayout(),
        timeout_s=420,
    )[0]
    for result in results:
        print(result.describe(), "max error", result.max_error, result.detail, result.seconds)
    for result in results:
        result.assert_close(f"{result.describe()}, kernels {result.detail['kernels']}")


def test_what_a_four_gpu_host_runs(monkeypatch):
    """With every backend usable and 4 GPUs, the SP cells that run are the table's.

    (On a real host ``usability()`` decides; here it is forced so the rule is
    visible on CPU.)  FlashInfer one-sided takes SP inputs: its SP cells run;
    two-sided does not; DeepEP cells wait for a DeepEP transport; 2 GPUs run no
    4-rank cell.
    """
    from vllm_ep_kit import backends

    monkeypatch.setattr(
        backends,
        "usability",
        lambda: [backends.BackendStatus(b.name, True, "ok", "") for b in all_backends()],
    )
    sp_cells = [c for c in all_cells() if c.combo == "tp2-dp2-ep-sp"]
    runs = sorted(c.id for c in sp_cells if cell_outcome(c, 4) == ("", ""))
    assert runs == [
        "allgather_reducescatter-bf16-tp2-dp2-ep-sp",
        "allgather_reducescatter-fp32-tp2-dp2-ep-sp",
        "flashinfer_nvlink_one_sided-bf16-tp2-dp2-ep-sp",
        "flashinfer_nvlink_one_sided-fp8-tp2-dp2-ep-sp",
    ]
    assert all(
        cell_outcome(c, 2)[1] == "needs 4 GPUs, 2 visible"
        for c in sp_cells
        if cell_outcome(c, 2)[0] != NOT_APPLICABLE
    )
    deepep = cell_outcome(MoeLayerCell("deepep_low_latency", "bf16", "dp2-ep"), 2)
    assert deepep[0] == NOT_HERE and "no deepep_low_latency all-to-all" in deepep[1]
