"""doctor's per-backend software verdict comes from the installed vLLM's own check.

FlashInfer 0.7.4 drops ``flashinfer.comm.trtllm_alltoall`` (the two-sided
kernels); vLLM 0.33 builds its one-sided manager on ``flashinfer.moe_ep``.
Each test hides those modules from a fresh interpreter, as a FlashInfer
without them would, and the backend's row must say what is missing while
the others stay as they were.  Whatever vLLM release is installed decides
(its ``has_flashinfer_nvlink_*`` functions), not a version string here.
"""

from __future__ import annotations

import pytest

from vllm_ep_kit.harness.fresh_python import run_json

pytestmark = [pytest.mark.vllm, pytest.mark.flashinfer]

ROWS = (
    "import json, sys\n"
    "for name in {hidden!r}: sys.modules[name] = None\n"
    "from vllm_ep_kit import backends\n"
    "print(json.dumps({{r.name: r.software for r in backends.usability(software=True)}}))"
)

ONE, TWO = "flashinfer_nvlink_one_sided", "flashinfer_nvlink_two_sided"


def software(*hidden: str) -> dict:
    return run_json(ROWS.format(hidden=list(hidden)))


def test_installed_flashinfer_has_both_nvlink_backends():
    rows = software()
    assert rows[ONE] == "ok" and rows[TWO] == "ok", rows


def test_a_flashinfer_without_the_two_sided_kernels_is_named():
    rows = software("flashinfer.comm.trtllm_alltoall")
    assert "has_flashinfer_nvlink_two_sided() is False" in rows[TWO], rows
    assert rows[ONE] == "ok", rows


def test_a_flashinfer_without_the_one_sided_kernels_is_named():
    # (flashinfer.comm imports trtllm_moe_alltoall itself: the two-sided row goes too)
    rows = software("flashinfer.comm.trtllm_moe_alltoall", "flashinfer.moe_ep")
    assert "has_flashinfer_nvlink_one_sided() is False" in rows[ONE], rows
