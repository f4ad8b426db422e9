"""The MoE layer parallel matrix, with sequence-parallel (SP) cases (upstream PR 41299).

Every (backend, activation dtype, layout) cell of ``vllm_ep_kit.moe_layer`` is
either exercised here or skipped with the reason from its tables.  On CPU the
layer runs through vLLM's real parallel state over gloo (2 and 4 ranks): SP
chunking with vLLM's ``sequence_parallel_chunk``, dispatch and combine through
vLLM's ``AgRsAll2AllManager``, the TP all-gather, and the trim of the chunk
padding; experts are the torch SiLU-MLP reference for each rank's experts.
Outputs are compared with the fp32 MoE computed on one process.
"""

from __future__ import annotations

import functools

import pytest

from vllm_ep_kit.backends import BACKENDS
from vllm_ep_kit.moe_layer import (
    BACKEND_SUPPORT,
    NOT_APPLICABLE,
    PARALLEL_COMBOS,
    MoeLayerCell,
    all_cells,
    cell_outcome,
    layer_cases,
    rank_moe_layer,
)
from vllm_ep_kit.testing import probes, run_ranks, skip_or_fail

pytestmark = pytest.mark.vllm


@functools.cache
def cell_results(backend: str, quant: str, combo: str, trim: bool = True) -> list:
    """One multi-rank start per cell: gloo on CPU, NCCL with one rank per GPU on GPUs.

    420 s on GPUs covers a first FlashInfer JIT build (about 200 s measured).
    """
    layout = PARALLEL_COMBOS[combo]
    gpus = probes.gpu_count()
    return run_ranks(rank_moe_layer, layout.world_size, MoeLayerCell(backend, quant, combo),
                     layer_cases(layout, quant), trim, backend="nccl" if gpus else "gloo",
                     layout=layout, all2all_backend=backend, timeout_s=420 if gpus else 300)


@pytest.mark.parametrize("combo", sorted(PARALLEL_COMBOS))
@pytest.mark.parametrize("backend", sorted(BACKEND_SUPPORT))
def test_sp_rule_matches_vllm(backend, combo):
    """The table's SP verdict equals vLLM's ``ParallelConfig.use_sequence_parallel_moe``."""
    from vllm.config import ParallelConfig

    layout = PARALLEL_COMBOS[combo]
    config = ParallelConfig(tensor_parallel_size=layout.tp, data_parallel_size=layout.dp,
                            enable_expert_parallel=layout.enable_ep, all2all_backend=backend,
                            distributed_executor_backend="mp")
    cell = MoeLayerCell(backend, "bf16", combo)
    assert bool(config.use_sequence_parallel_moe) == cell.is_sequence_parallel


def test_table_names_only_known_backends_and_has_an_sp_layout():
    known = {b.name for b in BACKENDS}
    assert set(BACKEND_SUPPORT) <= known
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
    results = cell_results(cell.backend, cell.quant, cell.combo)
    for rank, per_rank in enumerate(results):
        for result in per_rank:
            assert result["rows"] == result["tokens"], f"rank {rank} {result}"
            assert result["passed"], f"rank {rank} {result}"


def test_sp_layer_fails_without_the_trim():
    """Negative control: the SP wrapper without the trim keeps chunk padding rows."""
    if probes.gpu_count():
        skip_or_fail("the no-trim control runs over gloo on CPU hosts (AGRS on GPUs needs "
                     "vLLM's PyNccl; see `vllm-ep-kit doctor`)")
    results = cell_results("allgather_reducescatter", "bf16", "tp2-dp2-ep-sp", trim=False)
    uneven = [r for per_rank in results for r in per_rank if r["tokens"] % 2]
    assert uneven, "the cases need an odd token count on some rank"
    assert all(r["rows"] == r["tokens"] + 1 and not r["passed"] for r in uneven)
