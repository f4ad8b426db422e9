"""The plugin costs almost nothing where its patches do not run (every vLLM process loads
it): disabled, nothing is probed; enabled, each patch is armed and decided at first use.
Seconds are measured by ``scripts/bench_plugin_load.py`` (docs/performance.md), not here."""

from __future__ import annotations

import pytest

from vllm_ep_kit.harness.fresh_python import run_json

pytestmark = pytest.mark.vllm

PROGRAM = r"""
import json, sys
import vllm  # a vLLM process has vLLM imported when it loads its general plugins
before = set(sys.modules)
from vllm_ep_kit import patches
patches.register()
print(json.dumps({"new": sorted(set(sys.modules) - before),
                  "statuses": [s.as_dict() for s in patches.statuses()]}))
"""
HEAVY = ("vllm.distributed", "vllm.model_executor", "flashinfer")


def test_disable_all_probes_nothing_and_imports_almost_nothing():
    """VLLM_EP_KIT_PATCHES_DISABLE=all runs no probe (the probes import about 4,700
    modules, 10-57 s on a loaded 2-core machine)."""
    result = run_json(PROGRAM, env={"VLLM_EP_KIT_PATCHES_DISABLE": "all"})
    assert {s["status"] for s in result["statuses"]} == {"disabled"}
    assert all(s["reason"] == "disabled by configuration (not probed)" for s in result["statuses"])
    assert len(result["new"]) < 200, len(result["new"])
    assert not [m for m in result["new"] if m.startswith(HEAVY)]


def test_enabled_plugin_arms_patches_without_importing_what_they_patch():
    """register() arms each patch and probes none (probing all at once imports about
    4,700 modules)."""
    result = run_json(PROGRAM)
    assert {s["status"] for s in result["statuses"]} == {"pending"}, result["statuses"]
    assert len(result["new"]) < 200, len(result["new"])
    assert not [m for m in result["new"] if m.startswith(HEAVY)]
