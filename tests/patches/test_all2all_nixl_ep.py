"""Hotfix nixl_ep_tcp_store_group (upstream PR 41299) against real vLLM code.

vLLM 0.19.1's real ``NixlEPAll2AllManager`` on the real EP group (gloo, TP=1 x
DP=2) as vLLM's ``CudaCommunicator`` builds it for a non-elastic run: without
a ``tcp_store_group``.  NIXL is not installable here, so ``nixl_ep.Buffer`` is
a recording stand-in; the failure happens before any NIXL call.  Unpatched,
the first ``get_handle`` dies with an ``AttributeError`` on None; patched,
construction stops with an error naming the missing ``tcp_store_group``, and
construction with a store still works.
"""

from __future__ import annotations

import pytest

from tests.patches.releases import has_bug
from vllm_ep_kit.harness import run_ranks
from vllm_ep_kit.harness.fresh_python import run_json
from vllm_ep_kit.reference.layout import ParallelLayout

pytestmark = [pytest.mark.vllm]

PATCH = "nixl_ep_tcp_store_group"


def rank_nixl_manager_without_store(ctx, apply_plugin):
    import sys
    import types

    import vllm
    from vllm.distributed import parallel_state as ps
    from vllm.distributed.device_communicators import all2all

    from vllm_ep_kit import patches
    from vllm_ep_kit.patches.base import swapped
    from vllm_ep_kit.patches.vllm.distributed.device_communicators.all2all import (
        _RecordingBuffer,
    )

    statuses = {s.name: s.status for s in patches.apply_all()} if apply_plugin else {}
    fake = types.ModuleType("nixl_ep")
    fake.Buffer = _RecordingBuffer
    sys.modules["nixl_ep"] = fake
    cpu_group = ps.get_ep_group().cpu_group
    outcome = {"vllm": vllm.__version__, "statuses": statuses}
    try:
        manager = all2all.NixlEPAll2AllManager(cpu_group)
        manager.get_handle(
            {
                "num_global_experts": 8,
                "num_ep_ranks": 2,
                "max_num_tokens_per_dp_rank": 4,
                "token_hidden_size": 64,
            }
        )
        outcome["error"] = ""
    except Exception as exc:  # noqa: BLE001 (the test inspects what was raised)
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    all2all.NixlEPAll2AllManager._buffer = None
    store_group = types.SimpleNamespace(store=object(), rank=0, world_size=2)
    try:  # node placement is asked of the store group: answer for the stand-in
        with swapped(ps, in_the_same_node_as=lambda *a, **k: [True, True]):
            with_store = all2all.NixlEPAll2AllManager(cpu_group, store_group)
        outcome["with_store"] = with_store.tcp_store_group is store_group
    except Exception as exc:  # noqa: BLE001 (the release's refusal is the outcome)
        outcome["with_store"] = f"{type(exc).__name__}: {exc}"
    return outcome


@pytest.mark.parametrize("apply_plugin", [True, False], ids=["patched", "patch-disabled"])
def test_affected_release_reports_missing_tcp_store_group(
    affected_vllm_path, affected_release, apply_plugin
):
    bug = has_bug(PATCH, affected_release)
    results = run_ranks(
        rank_nixl_manager_without_store,
        2,
        apply_plugin,
        backend="gloo",
        layout=ParallelLayout(tp=1, dp=2),
        python_path=affected_vllm_path,
        timeout_s=300,
    )
    for result in results:
        assert result["vllm"] == affected_release
        if not bug:  # upstream's own check stops it first (0.22.0: a bare assert on
            # tcp_store_group; later releases make their own store); the plugin leaves it
            if apply_plugin:
                assert result["statuses"][PATCH] == "not needed"
            assert not result["error"].startswith("AttributeError"), result["error"]
        elif apply_plugin:
            assert result["statuses"][PATCH] == "applied"
            assert result["error"].startswith(
                "ValueError: NixlEPAll2AllManager needs tcp_store_group"
            ), result["error"]
            assert result["with_store"] is True
        else:  # the bug, reproduced: an AttributeError that names nothing useful
            assert result["error"] == (
                "AttributeError: 'NoneType' object has no attribute 'store'"
            ), result["error"]


def test_not_needed_on_pinned_vllm():
    code = (
        "import json; from vllm_ep_kit import patches;"
        "from vllm.distributed.device_communicators import all2all as m;"
        "before = m.NixlEPAll2AllManager.__init__;"
        "st = {s.name: s.status for s in patches.apply_all()};"
        "print(json.dumps({'st': st, 'same': before is m.NixlEPAll2AllManager.__init__}))"
    )
    data = run_json(code)
    assert data["st"][PATCH] == "not needed" and data["same"]
