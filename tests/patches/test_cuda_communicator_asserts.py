"""Hotfix reduce_scatterv_asserts: mismatched sizes are reported with the sizes.

Runs vLLM's own ``CudaCommunicator.reduce_scatterv`` on a bare communicator
(no NCCL: past the size checks it fails, which the test records) in a fresh
interpreter, for the pinned vLLM and for each fetched release, with the plugin on and with the patch disabled.
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.patches.releases import has_bug
from vllm_ep_kit.harness.fresh_python import run_json
from vllm_ep_kit.patches.vllm.distributed.device_communicators.cuda_communicator import (
    check_reduce_scatterv_sizes,
)

pytestmark = pytest.mark.vllm

PATCH = "reduce_scatterv_asserts"

PROGRAM = rf"""
import json, torch, vllm
from vllm_ep_kit import patches
from vllm.distributed.device_communicators.cuda_communicator import CudaCommunicator
from vllm_ep_kit.patches.vllm.distributed.device_communicators.cuda_communicator import (
    _bare_communicator)
status = {{s.name: s.status for s in patches.apply_all()}}[{PATCH!r}]
out = {{"vllm": vllm.__version__, "status": status, "errors": {{}}}}
calls = {{
    label: (lambda comm, rows=rows, sizes=sizes: CudaCommunicator.reduce_scatterv(
        comm, torch.zeros(rows, 4), dim=0, sizes=sizes))
    for label, rows, sizes in (("sum", 12, [3, 8]), ("count", 11, [3, 8, 0]),
                               ("even", 11, None), ("good", 11, [3, 8]))
}}
# as vLLM 0.33 calls it: the default dim (-1), and the method that fills a given output
calls["default_dim"] = lambda comm: CudaCommunicator.reduce_scatterv(
    comm, torch.zeros(4, 12), sizes=[3, 8])
if hasattr(CudaCommunicator, "reduce_scatterv_into_output"):  # not in older releases
    calls["into_output"] = lambda comm: CudaCommunicator.reduce_scatterv_into_output(
        comm, torch.zeros(12, 4), torch.zeros(3, 4), dim=0, sizes=[3, 8])
for label, call in calls.items():
    try:
        call(_bare_communicator(CudaCommunicator))
    except AssertionError as exc:
        out["errors"][label] = "AssertionError: " + str(exc)
    except Exception:  # past the size checks, the stub communicator cannot go on
        out["errors"][label] = "past the size checks"
print(json.dumps(out))
"""


def run_program(python_path=(), disable=False):
    env = {"VLLM_EP_KIT_PATCHES_DISABLE": PATCH} if disable else {}
    return run_json(PROGRAM, env=env, python_path=python_path)


def assert_clear_messages(errors, *, into_output=True):
    """``into_output``: the release has ``reduce_scatterv_into_output`` (0.32.0 and 0.33.0
    do; 0.19.1 does not)."""
    assert errors["sum"] == (
        "AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
        "sizes [3, 8] sum to 11 but the input has 12 rows"
    )
    assert errors["count"] == (
        "AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
        "got 3 sizes [3, 8, 0], need one per rank (2)"
    )
    assert errors["even"] == (
        "AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
        "11 input rows do not split evenly over 2 ranks and no sizes "
        "were given"
    )
    assert errors["good"] == "past the size checks"  # valid sizes reach the original method
    assert errors["default_dim"] == (
        "AssertionError: reduce_scatterv on rank 0 of 2 (dim=1): "
        "sizes [3, 8] sum to 11 but the input has 12 rows"
    )
    assert ("into_output" in errors) is into_output
    if into_output:
        assert errors["into_output"] == (
            "AssertionError: reduce_scatterv on rank 0 of 2 (dim=0): "
            "sizes [3, 8] sum to 11 but the input has 12 rows"
        )


def test_pinned_vllm_gets_clear_messages():
    result = run_program()
    assert result["status"] == "applied"  # 0.32.0 still has the bare asserts
    assert_clear_messages(result["errors"])


def test_pinned_vllm_with_patch_disabled_has_bare_asserts():
    result = run_program(disable=True)
    assert result["status"] == "needed"
    assert result["errors"]["sum"] == "AssertionError: "
    assert result["errors"]["good"] == "past the size checks"


def test_affected_release_gets_clear_messages(affected_vllm_path, affected_release):
    if not has_bug(PATCH, affected_release):
        pytest.skip(f"vLLM {affected_release} reports the sizes itself")
    result = run_program(affected_vllm_path)
    assert result["vllm"] == affected_release and result["status"] == "applied"
    assert_clear_messages(result["errors"], into_output="into_output" in result["errors"])


RENAMED = rf"""
import json, logging, torch, vllm
logging.basicConfig(level=logging.INFO)
from vllm.distributed.device_communicators import cuda_communicator as module
from vllm_ep_kit import patches
from vllm_ep_kit.patches.vllm.distributed.device_communicators.cuda_communicator import (
    _bare_communicator)
original = module.CudaCommunicator.reduce_scatterv

def reduce_scatterv(self, *args, **kwargs):  # a vLLM whose signature the wrapper cannot read
    return original(self, *args, **kwargs)

module.CudaCommunicator.reduce_scatterv = reduce_scatterv
status = {{s.name: s for s in patches.apply_all()}}[{PATCH!r}]
try:
    module.CudaCommunicator.reduce_scatterv(_bare_communicator(module.CudaCommunicator),
                                            torch.zeros(11, 4), dim=0, sizes=[3, 8])
    after = "returned"
except Exception as exc:
    after = type(exc).__name__ + ": " + str(exc)
print(json.dumps({{"status": status.status, "reason": status.reason, "after": after,
                  "ours": module.CudaCommunicator.reduce_scatterv is reduce_scatterv}}))
"""


def test_a_signature_the_wrapper_cannot_read_is_refused_not_applied():
    """A method whose arguments the wrapper cannot read by name (``*args, **kwargs``) is
    refused: wrapped, every call would raise ``KeyError: 'input_'``."""
    result = run_json(RENAMED)
    assert result["status"] == "refused", result
    assert "lacks the parameters input_, dim, sizes" in result["reason"]
    assert result["ours"]  # left as it was
    assert "KeyError" not in result["after"]


LAZY = rf"""
import json, logging, sys, torch
logging.basicConfig(level=logging.INFO)
from vllm_ep_kit import patches
patches.register()  # as vLLM loads it: armed, nothing probed yet
pending = {{s.name: s.status for s in patches.statuses()}}[{PATCH!r}]
from vllm.distributed.device_communicators.cuda_communicator import CudaCommunicator
from vllm_ep_kit.patches.vllm.distributed.device_communicators.cuda_communicator import (
    _bare_communicator)
errors = []
for _ in range(2):  # the first call decides the patch, both see the fix
    try:
        CudaCommunicator.reduce_scatterv(_bare_communicator(CudaCommunicator),
                                         torch.zeros(12, 4), dim=0, sizes=[3, 8])
    except AssertionError as exc:
        errors.append(str(exc))
print(json.dumps({{"pending": pending, "errors": errors,
                  "status": {{s.name: s.status for s in patches.statuses()}}[{PATCH!r}]}}))
"""


def test_the_plugin_decides_at_the_first_call_and_says_so_in_one_info_line():
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["pending"] == "pending" and data["status"] == "applied", data
    assert (
        data["errors"]
        == [
            "reduce_scatterv on rank 0 of 2 (dim=0): sizes [3, 8] sum to 11 "
            "but the input has 12 rows"
        ]
        * 2
    )
    lines = [
        line
        for line in result.stderr.splitlines()
        if "vllm-ep-kit patch reduce_scatterv_asserts applied" in line
    ]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "FlashInfer All2All initialized" not in result.stderr  # probes' vLLM INFO lines


@pytest.mark.parametrize(
    ("shape", "dim", "where"),
    [
        ((12, 4), 0, "dim=0"),
        ((4, 12), 1, "dim=1"),
        ((4, 12), -1, "dim=1"),
        ((2, 12, 3), 1, "dim=1"),
    ],
)
def test_rows_are_counted_along_the_dimension_scattered(shape, dim, where):
    with pytest.raises(AssertionError, match=re.escape(f"({where}): sizes [3, 8] sum to 11")):
        check_reduce_scatterv_sizes(torch.zeros(shape), dim, [3, 8], 2, 0)
    check_reduce_scatterv_sizes(torch.zeros(shape), dim, [4, 8], 2, 0)


@pytest.mark.parametrize(
    ("rows", "sizes", "error"),
    [
        (12, [4, 4], None),  # equal sizes: vLLM drops them and splits the rows evenly
        (12, [6, 6, 6], None),
        (11, [4, 4], "11 input rows do not split evenly over 2 ranks"),
        (12, [3, 8, 1], "got 3 sizes [3, 8, 1], need one per rank (2)"),
    ],
)
def test_equal_sizes_count_as_none_as_vllm_reads_them(rows, sizes, error):
    """Where vLLM's asserts pass the wrapper must not raise: it only says more where they fail."""
    if error is None:
        check_reduce_scatterv_sizes(torch.zeros(rows, 4), 0, sizes, 2, 0)
    else:
        with pytest.raises(AssertionError, match=re.escape(error)):
            check_reduce_scatterv_sizes(torch.zeros(rows, 4), 0, sizes, 2, 0)
