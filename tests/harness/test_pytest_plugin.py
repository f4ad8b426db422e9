"""Capability markers skip with a precise reason, and fail in strict mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_ep_kit.harness import probes

REPO = Path(__file__).resolve().parents[2]

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

    pytester.makeconftest(
        (Path(__file__).parents[1] / "conftest.py").read_text().replace('["pytester"] + ', "")
    )
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


RANK_CASES = """
from vllm_ep_kit.harness import run_ranks, skip_or_fail

def rank_cannot_run(ctx):
    skip_or_fail(f"rank {ctx.rank} lacks a planted capability")

def test_ranks_that_cannot_run():
    run_ranks(rank_cannot_run, 2, backend="gloo", timeout_s=60)
"""


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_ranks_that_cannot_run_skip_the_test_or_fail_it_in_strict_mode(
    pytester, monkeypatch, strict
):
    """The harness's own "not runnable here", raised in ranks and re-raised in the test's
    body (no pytest in the harness): the plugin makes it a skip with every rank's reason,
    or under --ep-strict a failure that names strict mode and the reason."""
    monkeypatch.delenv("VLLM_EP_KIT_STRICT", raising=False)
    monkeypatch.delenv("VLLM_EP_KIT_POOL", raising=False)
    _cases(pytester)
    pytester.makepyfile(test_ranks=RANK_CASES)
    result = pytester.runpytest("-rs", "test_ranks.py", *(["--ep-strict"] if strict else []))
    reason = "rank 0 lacks a planted capability; rank 1 lacks a planted capability"
    if strict:
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([f"*strict mode*required capability missing: {reason}*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines([f"SKIPPED*test_ranks.py*{reason}*"])


@pytest.mark.skipif(probes.gpu_count() >= 2, reason="machine has 2+ GPUs")
def test_nvlink_probe_reason_without_gpus():
    probe = probes.nvlink()
    assert not probe.ok
    assert "needs 2 GPUs" in probe.detail


def test_ptrace_probe_reports_cap_and_pidfd_getfd():
    probe = probes.ptrace()
    assert set(probe.data) >= {"cap_sys_ptrace", "yama_ptrace_scope", "pidfd_getfd"}
    assert ("works" in probe.detail) == probe.ok


@pytest.mark.flashinfer
def test_handle_exchange_follows_the_installed_flashinfer_not_ptrace(monkeypatch):
    """The installed FlashInfer passes fds over a Unix socket: no ptrace rights needed,
    so a host where pidfd_getfd fails still runs the FlashInfer NVLink tests."""
    assert probes.flashinfer_fd_exchange() == "scm_rights"
    monkeypatch.setattr(probes, "ptrace", lambda: probes.Probe("ptrace", False, "denied", {}))
    probes.handle_exchange.cache_clear()
    try:
        probe = probes.handle_exchange()
        assert probe.ok, probe.detail
        assert "SCM_RIGHTS" in probe.detail and probe.data["mechanism"] == "scm_rights"
    finally:
        probes.handle_exchange.cache_clear()


OLD_MNNVL = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def open_peer_fd(pid, fd):
    pidfd = libc.syscall(434, pid, 0)
    return libc.syscall(438, pidfd, fd, 0)
"""


def test_handle_exchange_needs_ptrace_where_flashinfer_uses_pidfd_getfd(tmp_path):
    """A FlashInfer whose MNNVL module has no Unix-socket exchange (0.6.15 and older):
    the requirement is pidfd_getfd's, decided by the ptrace probe."""
    comm = tmp_path / "flashinfer" / "comm"
    comm.mkdir(parents=True)
    (tmp_path / "flashinfer" / "__init__.py").write_text("")
    (comm / "__init__.py").write_text("")
    (comm / "mnnvl.py").write_text(OLD_MNNVL)
    code = (
        "from vllm_ep_kit.harness import probes; h = probes.handle_exchange(); "
        "print(probes.flashinfer_fd_exchange(), h.ok == probes.ptrace().ok, "
        "'pidfd_getfd' in h.detail)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.stdout.split() == ["pidfd_getfd", "True", "True"], result.stderr[-2000:]


def test_strict_flag_does_not_leak_into_the_calling_process(pytester, monkeypatch):
    import os

    monkeypatch.delenv("VLLM_EP_KIT_STRICT", raising=False)
    _cases(pytester)
    pytester.runpytest("--ep-strict")
    assert "VLLM_EP_KIT_STRICT" not in os.environ


def test_gpu_marker_under_a_multi_node_torchrun_job_counts_this_nodes_ranks(pytester, monkeypatch):
    """gpus(64) in a 16-node x 4-GPU job: each node needs 4 GPUs, not 64."""
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "64",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "head",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VLLM_EP_KIT_SPAWN", raising=False)
    if probes.gpu_count() >= 4:
        pytest.skip("this host has 4 GPUs: the marker would let the test run")
    _cases(pytester)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"*needs 4 CUDA GPUs, {probes.gpu_count()} visible*"])


def test_own_version_from_a_source_tree_without_metadata(monkeypatch):
    """A checkout on PYTHONPATH (the GPU hosts) has no dist-info: doctor said 'none'."""
    import vllm_ep_kit

    real = probes.package_version
    monkeypatch.setattr(
        probes, "package_version", lambda name: None if name == "vllm-ep-kit" else real(name)
    )
    assert probes.versions()["vllm-ep-kit"] == (
        f"{vllm_ep_kit.__version__} (source tree, not installed)"
    )


FRESH_CASES = """
import pytest

from vllm_ep_kit.harness import pool


@pytest.mark.fresh_ranks("measures process-wide state")
def test_marked_gets_processes_of_its_own():
    assert not pool.pool_enabled()


def test_unmarked_is_served_by_the_pool():
    assert pool.pool_enabled()
"""


def test_fresh_ranks_marker_opts_one_test_out_of_the_pool(pytester, monkeypatch):
    monkeypatch.delenv("VLLM_EP_KIT_POOL", raising=False)
    _cases(pytester)
    pytester.makepyfile(test_fresh=FRESH_CASES)
    result = pytester.runpytest("--ep-pool", "test_fresh.py")
    result.assert_outcomes(passed=2)


def test_fresh_ranks_marker_without_a_reason_stops_the_run(pytester):
    _cases(pytester)
    pytester.makepyfile(
        test_fresh="import pytest\n\n@pytest.mark.fresh_ranks()\ndef test_x():\n    pass\n"
    )
    result = pytester.runpytest("test_fresh.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: @pytest.mark.fresh_ranks needs its reason*"])
