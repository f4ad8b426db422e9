"""Hotfix mnnvl_workspace_ep_group (upstream PR 40893) against real vLLM code.

The pinned vLLM already has the fix: the probe must say "not needed" and the
plugin must change nothing.  Each fetched release's Python sources (run side by
side on the same torch; 0.19.1 in ``make test``) must be detected as what it
is (``releases.py``): an affected one patched, and afterwards the MNNVL
workspace on the EP group, with the patch disabled the same check failing; an
unaffected one left alone.  A worker started through vLLM's own
``WorkerWrapperBase.init_worker`` must have the patch applied.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.patches.releases import has_bug
from vllm_ep_kit.harness import run_ranks
from vllm_ep_kit.harness.fresh_python import run_json
from vllm_ep_kit.reference.layout import ParallelLayout

pytestmark = [pytest.mark.vllm, pytest.mark.flashinfer]

PATCH = "mnnvl_workspace_ep_group"
MANAGERS = ("flashinfer_nvlink_two_sided", "flashinfer_nvlink_one_sided")  # backend names


class RecordingWorker:
    """Stands in for vLLM's worker class: records what the plugin did in this process."""

    def __init__(self, *args, **kwargs):
        import os

        from vllm.distributed.device_communicators import all2all

        from vllm_ep_kit import patches

        RecordingWorker.seen = {
            "pid": os.getpid(),
            "statuses": [s.as_dict() for s in patches.statuses() or []],
            "initialize_patched": [
                bool(getattr(getattr(all2all, cls).initialize, "__vllm_ep_kit_ep_group__", False))
                for cls in ("FlashInferNVLinkTwoSidedManager", "FlashInferNVLinkOneSidedManager")
            ],
            "initialize_armed": [
                bool(getattr(getattr(all2all, cls).initialize, "__vllm_ep_kit_trigger__", False))
                for cls in ("FlashInferNVLinkTwoSidedManager", "FlashInferNVLinkOneSidedManager")
            ],
        }


def rank_patch_and_check(ctx, plugin):
    """The plugin (``register``: as vLLM loads it, decided at first use; ``apply_all``: as
    doctor decides, at once; ``off``), then the EP-group check of both managers."""
    import vllm

    from tests.distributed.test_mnnvl_alltoall import recorded_lifecycle
    from vllm_ep_kit import patches

    if plugin == "register":
        patches.register()
    elif plugin == "apply_all":
        patches.apply_all()
    before = [s.as_dict() for s in patches.statuses() or []]
    findings = {name: recorded_lifecycle(name, ("ensure",))["findings"] for name in MANAGERS}
    return {
        "vllm": vllm.__version__,
        "before_use": before,
        "findings": findings,
        "statuses": [s.as_dict() for s in patches.statuses() or []],
    }


def rank_worker_init(ctx):
    """Start a worker through vLLM's own init path, which loads general plugins; then the
    managers' first use, which decides the armed patch."""
    import os
    import types

    from vllm.v1.worker.worker_base import WorkerWrapperBase

    from tests.distributed.test_mnnvl_alltoall import recorded_lifecycle
    from vllm_ep_kit import patches

    config = ctx.vllm_config
    config.parallel_config.worker_cls = f"{__name__}.RecordingWorker"
    # No model here: init_worker reads only whether multimodal caching is on.
    object.__setattr__(config, "model_config", types.SimpleNamespace(multimodal_config=None))
    wrapper = WorkerWrapperBase(rpc_rank=0)
    wrapper.init_worker([{"vllm_config": config}])
    assert RecordingWorker.seen["pid"] == os.getpid()
    findings = {name: recorded_lifecycle(name, ("ensure",))["findings"] for name in MANAGERS}
    return {
        **RecordingWorker.seen,
        "findings": findings,
        "after_use": [s.as_dict() for s in patches.statuses() or []],
    }


def test_not_needed_on_pinned_vllm_and_nothing_changes():
    code = (
        "import json; from vllm.distributed.device_communicators import all2all as a;"
        "before = (a.FlashInferNVLinkTwoSidedManager.initialize,"
        " a.FlashInferNVLinkOneSidedManager.initialize);"
        "from vllm_ep_kit import patches; st = patches.apply_all();"
        "after = (a.FlashInferNVLinkTwoSidedManager.initialize,"
        " a.FlashInferNVLinkOneSidedManager.initialize);"
        "print(json.dumps({'st': [s.as_dict() for s in st], 'same': before == after}))"
    )
    data = run_json(code)
    status = next(s for s in data["st"] if s["name"] == PATCH)
    assert status["status"] == "not needed", status
    assert data["same"]


def status_of(statuses: list[dict]) -> dict:
    return next(s for s in statuses if s["name"] == PATCH)


@pytest.mark.parametrize("plugin", ["register", "apply_all", "off"])
def test_affected_release_is_detected_and_fixed(affected_vllm_path, affected_release, plugin):
    """Each release: patched where it has the bug (then the EP-group check passes), left
    alone where it has not; without the plugin the check fails exactly where the bug is."""
    bug = has_bug(PATCH, affected_release)
    layout = ParallelLayout(tp=2, dp=2)
    results = run_ranks(
        rank_patch_and_check,
        4,
        plugin,
        backend="gloo",
        layout=layout,
        python_path=affected_vllm_path,
        timeout_s=300,
    )
    for rank, result in enumerate(results):
        assert result["vllm"] == affected_release
        if plugin == "register":  # armed, then decided by the managers' first initialize
            assert status_of(result["before_use"])["status"] == "pending"
        if plugin != "off":
            status = status_of(result["statuses"])
            assert status["status"] == ("applied" if bug else "not needed"), status
            if bug:
                assert (
                    "DP group in: FlashInferNVLinkOneSidedManager, FlashInferNVLinkTwoSidedManager"
                ) in status["reason"]
            assert result["findings"] == {name: [] for name in MANAGERS}, f"rank {rank}"
        elif bug:  # the same check fails without the patch: the bug is real here
            for name in MANAGERS:
                assert any("workspace has 2 rows" in f for f in result["findings"][name])
        else:
            assert result["findings"] == {name: [] for name in MANAGERS}, f"rank {rank}"


def test_disabled_by_env_reports_needed(affected_vllm_path, affected_release, monkeypatch):
    if not has_bug(PATCH, affected_release):
        pytest.skip(f"vLLM {affected_release} has no EP-group bug: nothing to report needed")
    monkeypatch.setenv("VLLM_EP_KIT_PATCHES_DISABLE", PATCH)
    layout = ParallelLayout(tp=2, dp=2)
    results = run_ranks(
        rank_patch_and_check,
        4,
        "apply_all",
        backend="gloo",
        layout=layout,
        python_path=affected_vllm_path,
        timeout_s=300,
    )
    status = next(s for s in results[0]["statuses"] if s["name"] == PATCH)
    assert status["status"] == "needed" and "disabled by configuration" in status["reason"]
    assert results[0]["findings"]["flashinfer_nvlink_two_sided"]


def test_spawned_vllm_worker_has_the_patch(affected_vllm_path, affected_release):
    bug = has_bug(PATCH, affected_release)
    layout = ParallelLayout(tp=1, dp=2)
    results = run_ranks(
        rank_worker_init,
        2,
        backend="gloo",
        layout=layout,
        python_path=affected_vllm_path,
        timeout_s=300,
    )
    for seen in results:  # vLLM loaded the plugin: armed, not yet probed
        assert status_of(seen["statuses"])["status"] == "pending"
        assert seen["initialize_patched"] == [False, False]
        assert seen["initialize_armed"] == [True, True]
        assert status_of(seen["after_use"])["status"] == ("applied" if bug else "not needed")
        assert seen["findings"] == {name: [] for name in MANAGERS}
    assert len({seen["pid"] for seen in results}) == 2  # each worker process on its own


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "VLLM_EP_KIT_PATCHES_DISABLE",
            "no_such_patch",
            "VLLM_EP_KIT_PATCHES_DISABLE: unknown patch name(s) no_such_patch; known: ",
        ),
        (
            "VLLM_EP_KIT_PATCHES_REQUIRE",
            "mnnvl_workspace_ep_group,typo",
            "VLLM_EP_KIT_PATCHES_REQUIRE: unknown patch name(s) typo; known: ",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(variable, value, message):
    code = "from vllm_ep_kit import patches; patches.register()"
    env = {**__import__("os").environ, variable: value}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode != 0
    assert "PatchConfigError: " + message in out.stderr


def test_conflicting_disable_and_require_is_an_error():
    code = "from vllm_ep_kit import patches; patches.register()"
    env = {
        **__import__("os").environ,
        "VLLM_EP_KIT_PATCHES_REQUIRE": PATCH,
        "VLLM_EP_KIT_PATCHES_DISABLE": PATCH,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode != 0
    assert "both name mnnvl_workspace_ep_group" in out.stderr


def test_required_patch_that_is_refused_fails_fast(monkeypatch):
    """A required patch whose probe meets unknown vLLM code stops the process."""
    from vllm_ep_kit import patches
    from vllm_ep_kit.patches.base import Patch, UnrecognisedShape

    class UnknownShape(Patch):
        name = "unknown_shape"

        def probe(self):
            raise UnrecognisedShape("manager class has no initialize()")

    monkeypatch.setattr(patches, "all_patches", lambda: [UnknownShape()])
    monkeypatch.setenv("VLLM_EP_KIT_PATCHES_REQUIRE", "unknown_shape")
    with pytest.raises(
        patches.RequiredPatchError,
        match="required patch unknown_shape is refused: unrecognised vLLM "
        "code: manager class has no initialize",
    ):
        patches.apply_all(force=True)
    monkeypatch.delenv("VLLM_EP_KIT_PATCHES_REQUIRE")
    assert patches.apply_all(force=True)[0].status == "refused"  # logged, nothing patched
