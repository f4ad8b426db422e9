"""bundle: the FlashInfer tree is pruned by FlashInfer's own JIT specs and #include closure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_ep_kit.commands import bundle

pytestmark = pytest.mark.flashinfer


@pytest.fixture(scope="module")
def flashinfer_tree():
    return bundle.flashinfer_files()


def test_jit_sources_and_their_headers_are_in_the_tree(flashinfer_tree):
    root, files = flashinfer_tree
    sources, _ = bundle.flashinfer_jit_inputs()
    names = {f.relative_to(root).as_posix() for f in files}
    for source in sources:
        assert source.resolve().relative_to(root.resolve()).as_posix() in names
    assert "data/csrc/trtllm_moe_alltoall.cu" in names
    headers = [n for n in names if n.startswith("data/") and n.endswith((".h", ".cuh"))]
    assert headers, "no header reached by the #include scan"
    # The pruning is real: a small part of FlashInfer's 258 MB of CUDA sources.
    data_bytes = sum(f.stat().st_size for f in files if "data" in f.relative_to(root).parts)
    assert data_bytes < 20e6


def test_include_closure_follows_quoted_and_angle_includes(tmp_path):
    inc = tmp_path / "inc"
    (inc / "lib").mkdir(parents=True)
    (inc / "lib" / "a.h").write_text('#include "b.h"\n')
    (inc / "lib" / "b.h").write_text("#include <cuda_runtime.h>\n")  # outside: ignored
    (inc / "unused.h").write_text("")
    src = tmp_path / "k.cu"
    src.write_text("#include <lib/a.h>\nint main() {}\n")
    found = bundle.include_closure([src], [inc])
    assert found == {src, (inc / "lib" / "a.h").resolve(), (inc / "lib" / "b.h").resolve()}


def test_have_file_parsing(tmp_path):
    have = tmp_path / "freeze.txt"
    have.write_text("# comment\ntorch==2.11.0\nTyping_Extensions>=4\nnumpy @ file:///x\n\n")
    assert bundle.read_have(have) == {"torch", "typing-extensions", "numpy"}


def test_cli_refuses_a_non_empty_out(tmp_path):
    (tmp_path / "x").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", "bundle", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"OUT: {tmp_path} exists and is not empty" in result.stderr


def _tiny_wheel(directory: Path) -> Path:
    """A one-module wheel (``ep_kit_probe_pkg``), enough for pip to install."""
    import zipfile

    wheel = directory / "ep_kit_probe_pkg-1.0-py3-none-any.whl"
    info = "ep_kit_probe_pkg-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("ep_kit_probe_pkg.py", "VALUE = 42\n")
        zf.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: ep_kit_probe_pkg\nVersion: 1.0\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_bootstrap_installs_the_wheels_once(tmp_path):
    """Sourcing the bootstrap puts the wheels on the path; sourcing it again (one shell per
    test command on a GPU host) does not reinstall them."""
    from vllm_ep_kit.commands.bundle import BOOTSTRAP

    bundle, site = tmp_path / "bundle", tmp_path / "site"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "site").mkdir()
    _tiny_wheel(bundle / "wheels")
    (bundle / "bootstrap.sh").write_text(BOOTSTRAP)
    env = {
        **os.environ,
        "VLLM_EP_KIT_SITE": str(site),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    run = [
        "bash",
        "-c",
        f"source {bundle}/bootstrap.sh && python3 -c "
        "'import ep_kit_probe_pkg as p; print(p.VALUE)'",
    ]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and first.stdout.strip() == "42", first.stderr
    assert len(list(site.glob(".installed-*"))) == 1
    (site / "ep_kit_probe_pkg.py").unlink()  # a reinstall would bring it back
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "No module named 'ep_kit_probe_pkg'" in second.stderr


def test_kernel_stubs_stand_in_only_where_the_library_is_absent(tmp_path):
    from vllm_ep_kit.commands.bundle import VLLM_KERNEL_STUBS, write_kernel_stubs

    assert write_kernel_stubs(tmp_path) == list(VLLM_KERNEL_STUBS)
    assert (tmp_path / "_C_stable_libtorch.py").is_file()
    assert (tmp_path / "vllm_flash_attn" / "_vllm_fa2_C.py").is_file()
    (tmp_path / "_C_stable_libtorch.abi3.so").write_bytes(b"\x7fELF")  # the real one installed
    assert write_kernel_stubs(tmp_path) == ["vllm_flash_attn._vllm_fa2_C"]
    assert not (tmp_path / "_C_stable_libtorch.py").exists()


def test_shipped_sources_are_older_than_the_committed_jit_cache(tmp_path, flashinfer_tree):
    """FlashInfer's JIT (ninja) rebuilds a module whose inputs are newer than its outputs: a
    fresh bundle copied FlashInfer's sources with this machine's install time, newer than
    the committed cache, and the GPU host rebuilt the modules (153 s instead of 6 s)."""
    import tarfile

    root, files = flashinfer_tree
    plan = bundle.BundlePlan(flashinfer_files=files, flashinfer_root=root)
    bundle.write(plan, tmp_path / "b", "3.12", "manylinux_2_28_x86_64", progress=lambda m: None)
    site = tmp_path / "b" / "site"
    mtimes = {p.lstat().st_mtime for p in site.rglob("*")}
    assert mtimes == {bundle.SOURCE_MTIME}
    caches = sorted(
        (Path(__file__).resolve().parents[1] / "assets" / "flashinfer-jit").glob("*.xz")
    )
    assert caches, "no committed JIT cache"
    for cache in caches:
        with tarfile.open(cache) as tar:
            built = [m for m in tar.getmembers() if m.name.endswith((".so", ".o"))]
        assert built and min(m.mtime for m in built) > bundle.SOURCE_MTIME
