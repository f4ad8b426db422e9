"""Hotfix two_sided_dispatch_x_sf_guard (upstream PR 41299) against real vLLM code.

Each fetched release's real ``flashinfer_alltoall_dispatch`` (0.18.0: in its older
module) with its real input
quantisation (no quantisation: no scales) and FlashInfer's two-sided kernels
replaced by a payload recorder: without the patch ``None`` reaches the
all-to-all; with it only the activations travel and ``x_sf`` comes back None.
"""

from __future__ import annotations

import pytest

from tests.patches.releases import has_bug
from vllm_ep_kit.harness import run_ranks
from vllm_ep_kit.harness.fresh_python import run_json

pytestmark = [pytest.mark.vllm, pytest.mark.flashinfer]

PATCH = "two_sided_dispatch_x_sf_guard"


def rank_dispatch_without_scales(ctx, apply_plugin):

    import torch
    import vllm

    from vllm_ep_kit import patches
    from vllm_ep_kit.patches.base import swapped
    from vllm_ep_kit.patches.vllm.model_executor.layers.fused_moe.prepare_finalize import (
        flashinfer_nvlink_two_sided as fix,
    )

    statuses = {s.name: s.status for s in patches.apply_all()} if apply_plugin else {}
    module = fix.dispatch_module()  # wherever this release defines the dispatch
    recorder = fix._PayloadRecorder()
    manager, quant = fix.probe_stand_ins()
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    outcome = {"vllm": vllm.__version__, "statuses": statuses}
    with swapped(fix._flashinfer_alltoall_module(), MnnvlMoe=recorder.MnnvlMoe):
        try:
            result = module.flashinfer_alltoall_dispatch(
                manager,
                [3, 3],
                x,
                None,
                torch.zeros(3, 2, dtype=torch.int32),
                torch.full((3, 2), 0.5),
                2,
                4,
                quant,
            )
            outcome["error"] = ""
            outcome["x_equal"] = bool(torch.equal(result[3], x))
            outcome["x_sf"] = None if result[4] is None else "tensor"
        except TypeError as exc:
            outcome["error"] = str(exc)
    outcome["payloads"] = ["none" if p is None else "tensor" for p in recorder.payloads]
    return outcome


@pytest.mark.parametrize("apply_plugin", [True, False], ids=["patched", "patch-disabled"])
def test_affected_release_sends_no_scale_payload_when_patched(
    affected_vllm_path, affected_release, apply_plugin
):
    bug = has_bug(PATCH, affected_release)
    (result,) = run_ranks(
        rank_dispatch_without_scales,
        1,
        apply_plugin,
        backend="gloo",
        python_path=affected_vllm_path,
        timeout_s=300,
    )
    assert result["vllm"] == affected_release
    if apply_plugin or not bug:
        if apply_plugin:
            assert result["statuses"][PATCH] == ("applied" if bug else "not needed")
        assert result["error"] == ""
        assert result["payloads"] == ["tensor"]  # activations only, no scale all-to-all
        assert result["x_equal"] and result["x_sf"] is None
    else:  # the bug, reproduced: None handed to FlashInfer's all-to-all
        assert result["payloads"] == ["tensor", "none"]
        assert "got None as its payload" in result["error"]


def test_not_needed_on_pinned_vllm():
    code = (
        "import json; from vllm_ep_kit import patches;"
        "from vllm.model_executor.layers.fused_moe.prepare_finalize import "
        "flashinfer_nvlink_two_sided as m; before = m.flashinfer_alltoall_dispatch;"
        "st = {s.name: s.status for s in patches.apply_all()};"
        "print(json.dumps({'st': st, 'same': before is m.flashinfer_alltoall_dispatch}))"
    )
    data = run_json(code)
    assert data["st"][PATCH] == "not needed" and data["same"]
