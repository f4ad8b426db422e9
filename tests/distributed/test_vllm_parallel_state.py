"""vLLM's real parallel state over gloo: the EP group is DP x PCP x TP.

This is the layout behind the MNNVL workspace fix: with TP=1 the EP group equals the DP
group, which hid the MNNVL workspace bug; with TP=2 x DP=2 they differ.
"""

from __future__ import annotations

import pytest

from vllm_ep_kit.harness import run_ranks
from vllm_ep_kit.reference.layout import LayoutError, ParallelLayout

pytestmark = pytest.mark.vllm


def rank_groups(ctx):
    from vllm.distributed import parallel_state as ps

    def ranks(group):
        return {
            "size": group.world_size,
            "ranks": list(group.ranks),
            "rank_in_group": group.rank_in_group,
        }

    ep = ps.get_ep_group()
    return {
        "tp": ranks(ps.get_tp_group()),
        "dp": ranks(ps.get_dp_group()),
        "ep": ranks(ep),
        "use_all2all": ctx.vllm_config.parallel_config.use_all2all,
        "ep_comm_use_all2all": ep.device_communicator.use_all2all,
        "sp": ctx.vllm_config.parallel_config.use_sequence_parallel_moe,
    }


@pytest.mark.parametrize(("tp", "dp"), [(2, 1), (1, 2), (2, 2)])
def test_vllm_groups_match_layout(tp, dp):
    layout = ParallelLayout(tp=tp, dp=dp)
    results = run_ranks(
        rank_groups, layout.world_size, backend="gloo", layout=layout, timeout_s=180
    )
    for rank, groups in enumerate(results):
        assert groups["tp"]["ranks"] == layout.tp_group_ranks(rank)
        assert groups["dp"]["ranks"] == layout.dp_group_ranks(rank)
        assert groups["ep"]["size"] == layout.ep_size == tp * dp
        assert groups["ep"]["ranks"] == layout.ep_group_ranks(rank)
        assert groups["ep"]["rank_in_group"] == rank
        assert groups["sp"] == layout.is_sequence_parallel
        # On a CPU-only machine vLLM's platform is "unspecified", whose base
        # communicator builds no all-to-all manager; the flag is still derived.
        assert groups["use_all2all"] == groups["ep_comm_use_all2all"] == layout.uses_all2all
    # The regression's precondition: TP>1 with DP>1 makes EP and DP differ.
    if tp > 1 and dp > 1:
        assert results[0]["ep"]["size"] != results[0]["dp"]["size"]


def test_layout_rules():
    assert ParallelLayout(tp=2, dp=2).is_sequence_parallel
    assert not ParallelLayout(tp=1, dp=4).is_sequence_parallel
    assert not ParallelLayout(tp=4, dp=1).is_sequence_parallel
    assert not ParallelLayout(tp=2, dp=2, enable_ep=False).is_sequence_parallel
    assert ParallelLayout.for_world(4, tp=2) == ParallelLayout(tp=2, dp=2)
    with pytest.raises(LayoutError, match="tp=3: world size 4 is not divisible"):
        ParallelLayout.for_world(4, tp=3)
    with pytest.raises(LayoutError, match="dp=0"):
        ParallelLayout(tp=1, dp=0)
