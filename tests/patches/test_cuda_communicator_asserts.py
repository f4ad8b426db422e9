"""Hotfix reduce_scatterv_asserts: mismatched sizes are reported with the sizes.

Runs vLLM's own ``CudaCommunicator.reduce_scatterv`` on a bare communicator
(no NCCL: past the size checks it fails, which the test records) in a fresh interpreter, for the pinned
vLLM and for 0.19.1, with the plugin on and with the patch disabled.
"""

from __future__ import annotations

import pytest

from vllm_ep_kit.fresh_python import run_json

pytestmark = pytest.mark.vllm

PATCH = "reduce_scatterv_asserts"

PROGRAM = r"""
import json, torch, vllm
from vllm_ep_kit import patches
from vllm.distributed.device_communicators.cuda_communicator import CudaCommunicator
from vllm_ep_kit.patches.vllm.distributed.device_communicators.cuda_communicator import (
    _bare_communicator)
status = {s.name: s.status for s in patches.apply_all()}[%r]
out = {"vllm": vllm.__version__, "status": status, "errors": {}}
for label, rows, sizes in (("sum", 12, [3, 8]), ("count", 11, [3, 8, 0]),
                           ("even", 11, None), ("good", 11, [3, 8])):
    comm = _bare_communicator(CudaCommunicator)
    try:
        CudaCommunicator.reduce_scatterv(comm, torch.zeros(rows, 4), dim=0, sizes=sizes)
    except AssertionError as exc:
        out["errors"][label] = "AssertionError: " + str(exc)
    except Exception:  # past the size checks, the stub communicator cannot go on
        out["errors"][label] = "past the size checks"
print(json.dumps(out))
""" % PATCH


def run_program(python_path=(), disable=False):
    env = {"VLLM_EP_KIT_PATCHES_DISABLE": PATCH} if disable else {}
    return run_json(PROGRAM, env=env, python_path=python_path)


def assert_clear_messages(errors):
    assert errors["sum"] == ("AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
                             "sizes [3, 8] sum to 11 but the input has 12 rows")
    assert errors["count"] == ("AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
                               "got 3 sizes [3, 8, 0], need one per rank (2)")
    assert errors["even"] == ("AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
                              "11 input rows do not split evenly over 2 ranks and no sizes "
                              "were given")
    assert errors["good"] == "past the size checks"  # valid sizes reach the original method


def test_pinned_vllm_gets_clear_messages():
    result = run_program()
    assert result["status"] == "applied"  # 0.32.0 still has the bare asserts
    assert_clear_messages(result["errors"])


def test_pinned_vllm_with_patch_disabled_has_bare_asserts():
    result = run_program(disable=True)
    assert result["status"] == "needed"
    assert result["errors"]["sum"] == "AssertionError: "
    assert result["errors"]["good"] == "past the size checks"


def test_affected_release_gets_clear_messages(affected_vllm_path):
    result = run_program(affected_vllm_path)
    assert result["vllm"] == "0.19.1" and result["status"] == "applied"
    assert_clear_messages(result["errors"])
