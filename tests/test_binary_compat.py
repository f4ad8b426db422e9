"""Binary compatibility probes: vLLM's PyNccl vs an NCCL library, vLLM's kernels vs torch.

Both verdicts come from real loaders: the NCCL probe runs vLLM's own
``NCCLLibrary`` against small shared libraries compiled here that export all,
or all but two, of the functions vLLM asks for; the stable-ABI check reads the
ELF symbol tables of a library compiled here and of the installed torch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.drivers import stable_abi
from vllm_ep_kit.harness import probes

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


# An extension calling a stable-ABI function no torch has: what a wheel built for a newer
# torch looks like to this one.
NEEDS_A_FUTURE_TORCH = """
extern int aoti_torch_from_a_future_release(void);
int use(void) { return aoti_torch_from_a_future_release(); }
"""


def _compile(tmp_path: Path, name: str, source: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def _vllm_nccl_functions() -> list[str]:
    from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

    return [f.name for f in NCCLLibrary.exported_functions]


def _nccl_stub(tmp_path: Path, name: str, leave_out: set[str], version: int) -> Path:
    body = [f"int ncclGetVersion(int *v) {{ *v = {version}; return 0; }}"]
    body += [
        f"int {fn}(void) {{ return 0; }}"
        for fn in _vllm_nccl_functions()
        if fn not in leave_out and fn != "ncclGetVersion"
    ]
    return _compile(tmp_path, name, "\n".join(body) + "\n")


@pytest.mark.vllm
def test_pynccl_probe_names_what_an_old_nccl_lacks(tmp_path, monkeypatch):
    """An NCCL 2.28.9 look-alike without ncclCommSuspend/Resume: vLLM's loader refuses it."""
    lib = _nccl_stub(tmp_path, "libnccl_old", {"ncclCommSuspend", "ncclCommResume"}, 22809)
    monkeypatch.setenv("VLLM_NCCL_SO_PATH", str(lib))
    probe = probes.vllm_pynccl.__wrapped__()
    assert not probe.ok, probe
    assert probe.data["nccl"] == "NCCL 2.28.9"
    assert set(probe.data["missing"]) == {"ncclCommSuspend", "ncclCommResume"}
    assert "rejects" in probe.detail and "ncclCommSuspend" in probe.detail


@pytest.mark.vllm
def test_pynccl_probe_accepts_a_complete_library(tmp_path, monkeypatch):
    lib = _nccl_stub(tmp_path, "libnccl_new", set(), 23207)
    monkeypatch.setenv("VLLM_NCCL_SO_PATH", str(lib))
    probe = probes.vllm_pynccl.__wrapped__()
    assert probe.ok, probe
    assert probe.data == {"nccl": "NCCL 2.32.7", "missing": []}


def test_stable_abi_check_finds_a_missing_torch_function(tmp_path):
    """An extension importing one function torch has and one it has not."""
    have = sorted(s for s in stable_abi.torch_exports() if s.startswith("aoti_torch_"))[0]
    ext = _compile(
        tmp_path,
        "fake_ext",
        f"""
        extern int {have}(void);
        extern int aoti_torch_from_a_future_release(void);
        int use(void) {{ return {have}() + aoti_torch_from_a_future_release(); }}
    """,
    )
    assert stable_abi.stable_abi_imports(ext) == {have, "aoti_torch_from_a_future_release"}
    verdict = stable_abi.check_extension(ext)
    assert verdict.missing == ["aoti_torch_from_a_future_release"] and not verdict.loads
    # The same verdict from a symbol list written on another machine.
    listed = stable_abi.write_symbol_list(ext, tmp_path / "fake_ext.imports.json")
    assert json.loads(listed.read_text())["extension"] == "fake_ext.so"
    assert stable_abi.check_symbol_list(listed).missing == verdict.missing


def test_stable_abi_load_reports_the_loader_error(tmp_path):
    ext = _compile(
        tmp_path,
        "fake_ext2",
        NEEDS_A_FUTURE_TORCH,
    )
    error = stable_abi.try_load(ext)
    assert error is not None and re.search(
        r"undefined symbol: aoti_torch_from_a_future_release", error
    ), error


def test_running_a_library_that_cannot_load_reports_the_missing_symbol_as_data(tmp_path):
    """The ``run`` command's row: not loaded, no ops, the loader's error naming the symbol
    (in this process: dlopen with immediate binding, before torch sees the library)."""
    ext = _compile(
        tmp_path,
        "_moe_C_stable_libtorch",
        NEEDS_A_FUTURE_TORCH,
    )
    row = stable_abi.run_library(ext)
    assert row["loaded"] is False and "ops" not in row and "kernel" not in row, row
    assert "undefined symbol: aoti_torch_from_a_future_release" in str(row["error"]), row
    assert stable_abi.main(["run", str(ext)]) == 1
