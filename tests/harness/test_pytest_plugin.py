"""Capability markers skip with a precise reason, and fail in strict mode."""

import pytest

from vllm_ep_kit.testing import probes

CASES = """
import pytest

@pytest.mark.gpus(64)
def test_needs_many_gpus():
    pass

def test_plain():
    pass
"""


def _cases(pytester):
    """The cases plus a conftest that loads the plugin as tests/conftest.py does."""
    from pathlib import Path

    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text()
                          .replace('["pytester"] + ', ""))
    pytester.makepyfile(CASES)


def test_unmet_gpu_marker_skips_with_reason(pytester):
    _cases(pytester)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"*needs 64 CUDA GPUs, {probes.gpu_count()} visible*"])


def test_strict_flag_turns_the_skip_into_a_failure(pytester, monkeypatch):
    monkeypatch.delenv("VLLM_EP_KIT_STRICT", raising=False)
    _cases(pytester)
    result = pytester.runpytest("--ep-strict")
    result.assert_outcomes(passed=1, errors=1)  # fails in setup, before the test body
    result.stdout.fnmatch_lines(["*strict mode*required capability missing*needs 64 CUDA GPUs*"])


def test_strict_env_turns_the_skip_into_a_failure(pytester, monkeypatch):
    monkeypatch.setenv("VLLM_EP_KIT_STRICT", "1")
    _cases(pytester)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)


@pytest.mark.skipif(probes.gpu_count() >= 2, reason="machine has 2+ GPUs")
def test_nvlink_probe_reason_without_gpus():
    probe = probes.nvlink()
    assert not probe.ok
    assert "needs 2 GPUs" in probe.detail


def test_ptrace_probe_reports_cap_and_pidfd_getfd():
    probe = probes.ptrace()
    assert set(probe.data) >= {"cap_sys_ptrace", "yama_ptrace_scope", "pidfd_getfd"}
    assert ("works" in probe.detail) == probe.ok


def test_strict_flag_does_not_leak_into_the_calling_process(pytester, monkeypatch):
    import os

    monkeypatch.delenv("VLLM_EP_KIT_STRICT", raising=False)
    _cases(pytester)
    pytester.runpytest("--ep-strict")
    assert "VLLM_EP_KIT_STRICT" not in os.environ


def test_gpu_marker_under_a_multi_node_torchrun_job_counts_this_nodes_ranks(pytester,
                                                                            monkeypatch):
    """gpus(64) in a 16-node x 4-GPU job: each node needs 4 GPUs, not 64."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "64", "LOCAL_WORLD_SIZE": "4",
                       "MASTER_ADDR": "head", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VLLM_EP_KIT_SPAWN", raising=False)
    if probes.gpu_count() >= 4:
        pytest.skip("this host has 4 GPUs: the marker would let the test run")
    _cases(pytester)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"*needs 4 CUDA GPUs, {probes.gpu_count()} visible*"])
