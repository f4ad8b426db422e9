"""``bundle``: what an air-gapped GPU host with torch (but no vLLM, FlashInfer or network) needs.

Everything is derived rather than guessed:
- FlashInfer: its Python package plus, for the comm JIT modules, the sources
  their JIT specs list and the headers those include (a scan of ``#include``
  lines over FlashInfer's own include directories), not the 258 MB of CUDA
  sources it ships.
- vLLM: its Python sources without compiled kernels (optional).
- Wheels: the distributions that importing the needed modules actually loads
  (traced in a fresh interpreter here), minus those the target already has,
  downloaded for the target's Python and platform.
The result is a folder with ``site/`` (to put on PYTHONPATH), ``wheels/`` and
``bootstrap.sh``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import vllm_ep_kit
from vllm_ep_kit.commands.import_closure import minimal_distributions, normalise
from vllm_ep_kit.harness.fresh_python import run_json

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)
FLASHINFER_COMM_SPECS = ("gen_comm_alltoall_module", "gen_moe_alltoall_module")
TRACE_MODULES = (
    "flashinfer.comm",
    "flashinfer.comm.mnnvl",
    "flashinfer.comm.trtllm_alltoall",
    "flashinfer.comm.trtllm_moe_alltoall",
    "flashinfer.jit",
    "vllm_ep_kit.harness",
    "vllm_ep_kit.backends.flashinfer_one_sided",
    "vllm_ep_kit.backends.flashinfer_two_sided",
    "vllm_ep_kit.patches.lazy",
)
# What the GPU tests import from vLLM: config, parallel state, the CUDA platform and
# communicator, the all-to-all managers (and this kit's modules that drive them).
VLLM_TRACE_MODULES = (
    "vllm.config",
    "vllm.distributed.parallel_state",
    "vllm.distributed.device_communicators.all2all",
    "vllm.distributed.device_communicators.cuda_communicator",
    "vllm.platforms.cuda",
    "vllm_ep_kit.harness.vllm_state",
    "vllm_ep_kit.commands.check",
    "vllm_ep_kit.backends.mnnvl",
    "vllm.model_executor.layers.fused_moe",
    "vllm_ep_kit.backends.vllm_experts",
    "vllm_ep_kit.commands.bench.rank",
)
# Compiled kernel modules vLLM imports unconditionally on CUDA: its custom ops (the
# CUDA platform) and FlashAttention-2 (``vllm.vllm_flash_attn``, imported by the
# fused-MoE package through the model loader; it refuses to import without FA2 or
# FA3).  They are not shipped (79 MB, 308 MB: built for another torch, too big to
# carry); an empty module stands in so code that never calls their ops imports.
# A call to one of their ops fails loudly (torch.ops has no such op), it never runs
# something else.  ``_C`` can be installed for real (run_with_bundle.sh); FA never is.
VLLM_KERNEL_STUBS = ("_C_stable_libtorch", "vllm_flash_attn._vllm_fa2_C")


def write_kernel_stubs(vllm_dir: Path | str) -> list[str]:
    """Write a stand-in for each of ``VLLM_KERNEL_STUBS`` lacking its compiled library.

    Returns the names written.  Where the real ``NAME*.so`` is present the stub is
    removed instead, so the library, not the stand-in, is imported.
    """
    written = []
    for name in VLLM_KERNEL_STUBS:
        stub = Path(vllm_dir, *name.split(".")).with_suffix(".py")
        if any(stub.parent.glob(f"{stub.stem}.*so")):
            stub.unlink(missing_ok=True)
            continue
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(
            f'"""Stand-in written by vllm-ep-kit bundle: vLLM\'s compiled {name} '
            'is not shipped; its ops are absent."""\n'
        )
        written.append(name)
    return written


@dataclass
class BundlePlan:
    flashinfer_files: list[Path] = field(default_factory=list)
    flashinfer_root: Path | None = None
    vllm_root: Path | None = None
    distributions: dict[str, str] = field(default_factory=dict)  # name -> version to ship
    reasons: dict[str, str] = field(default_factory=dict)  # name -> why it is needed


def _package_root(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{name} is not installed here; install it to bundle it")
    return Path(spec.origin).parent


def flashinfer_jit_inputs(arch: str = "9.0a") -> tuple[list[Path], list[Path]]:
    """(sources, include dirs) of FlashInfer's comm JIT specs (read, not built)."""
    code = (
        "import json; from flashinfer.jit import comm; out = {'src': [], 'inc': []}\n"
        f"for name in {FLASHINFER_COMM_SPECS!r}:\n"
        "    spec = getattr(comm, name)()\n"
        "    out['src'] += [str(s) for s in spec.sources]\n"
        "    out['inc'] += [str(s) for s in (spec.extra_include_dirs or [])]\n"
        "print(json.dumps(out))"
    )
    data = run_json(code, env={"FLASHINFER_CUDA_ARCH_LIST": arch})
    return [Path(p) for p in data["src"]], [Path(p) for p in data["inc"]]


def include_closure(sources: list[Path], search: list[Path]) -> set[Path]:
    """Every file reachable by #include from ``sources`` within ``search`` dirs."""
    todo, seen = list(sources), set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in INCLUDE.findall(path.read_text(errors="replace")):
            for base in (path.parent, *search):
                candidate = (base / name).resolve()
                if candidate.is_file():
                    todo.append(candidate)
                    break
    return seen


def flashinfer_files() -> tuple[Path, list[Path]]:
    root = _package_root("flashinfer")
    sources, extra = flashinfer_jit_inputs()
    data = root / "data"
    search = [
        *extra,
        data / "include",
        data / "csrc",
        data / "cutlass" / "include",
        data / "cutlass" / "tools" / "util" / "include",
        data / "spdlog" / "include",
    ]
    files = {
        p
        for p in root.rglob("*")
        if p.is_file() and "data" not in p.relative_to(root).parts and "__pycache__" not in p.parts
    }
    files |= include_closure([s.resolve() for s in sources], [s.resolve() for s in search])
    return root, sorted(files)


def read_have(path: Path | None) -> set[str]:
    """Distribution names the target already has (``pip freeze`` / one name per line)."""
    if path is None:
        return set()
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(normalise(re.split(r"[=<>@ ;\[]", line, maxsplit=1)[0]))
    return names


def plan(
    include_vllm: bool,
    have: set[str],
    extra_modules: tuple[str, ...] = (),
    skip: AbstractSet[str] = frozenset(),
    progress=lambda message: None,
) -> BundlePlan:
    """What to ship: FlashInfer's pruned tree, optionally vLLM, and the import closure.

    ``have``: distributions the target has (their requirements too); ``skip``: never
    ship these, and do not assume anything they require is there.
    """
    result = BundlePlan()
    result.flashinfer_root, result.flashinfer_files = flashinfer_files()
    modules = TRACE_MODULES + extra_modules
    stubs: tuple[str, ...] = ()
    if include_vllm:
        result.vllm_root = _package_root("vllm")
        modules += VLLM_TRACE_MODULES
        stubs = tuple(f"vllm.{name}" for name in VLLM_KERNEL_STUBS)
    closure = minimal_distributions(
        modules,
        have,
        always={"flashinfer-python", "vllm"},
        skip=skip,
        extra_path=(str(Path(vllm_ep_kit.__file__).resolve().parents[1]),),
        stubs=stubs,
        progress=progress,
    )
    result.distributions = closure.needed
    result.reasons = closure.reasons
    return result


def copy_python_sources(root: Path, target: Path) -> int:
    """Copy the ``*.py`` files of a package tree (no binaries, data or caches)."""
    count = 0
    for path in root.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        dest = target / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        count += 1
    return count


def _installed_version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


def write_dist_info(site: Path, name: str, version: str) -> None:
    """Distribution metadata for a package shipped as sources.

    vLLM reads its own distribution version to pick the platform: without it
    (``importlib.metadata`` finds no ``vllm``) CUDA is not detected and vLLM
    runs with its unspecified platform, without CUDA device communicators
    (measured on an H200 host with vLLM shipped as sources).
    """
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("vllm-ep-kit bundle\n")


def compatible_platforms(platform: str) -> list[str]:
    """``platform`` plus the older manylinux tags a manylinux_2_N host also accepts."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    tags = [platform]
    if match:
        glibc, arch = int(match.group(1)), match.group(2)
        tags += [f"manylinux_2_{n}_{arch}" for n in range(glibc - 1, 4, -1)]
        tags += [
            f"manylinux{alias}_{arch}"
            for alias, n in (("2014", 17), ("2010", 12), ("1", 5))
            if n <= glibc
        ]
    return tags + ["any"]


def _download(
    name: str, spec: str, wheels: Path, python_version: str, platform_args: list[str]
) -> tuple[bool, list[str]]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        *platform_args,
        "-d",
        str(wheels),
        f"{name}{spec}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return not result.returncode, result.stderr.strip().splitlines()[-1:] or ["failed"]


# Every shipped source gets this modification time (2000-01-01T00:00:00Z), as the bootstrap
# gives the wheels it installs.  FlashInfer's JIT (ninja) rebuilds a module whose recorded
# inputs are newer than its outputs: files copied from a fresh install carry that install's
# time, newer than the committed JIT cache, so every fresh bundle rebuilt the modules.
SOURCE_MTIME = 946684800


def pin_mtimes(folder: Path, when: float = SOURCE_MTIME) -> int:
    """Give every file and folder under ``folder`` the modification time ``when``."""
    count = 0
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (when, when), follow_symlinks=False)
        count += 1
    return count


def write(
    bundle: BundlePlan,
    out: Path,
    python_version: str,
    platform: str,
    jit_cache: Path | None = None,
    progress=print,
) -> dict:
    """Materialise ``bundle`` in ``out``; return a manifest (also written as JSON)."""
    site, wheels = out / "site", out / "wheels"
    for folder in (site, wheels):
        folder.mkdir(parents=True, exist_ok=True)
    root = bundle.flashinfer_root
    for path in bundle.flashinfer_files:
        if root is None:
            raise ValueError("the bundle plan lists FlashInfer files without their root")
        target = site / "flashinfer" / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    progress(f"bundle: flashinfer: {len(bundle.flashinfer_files)} files")
    if bundle.vllm_root is not None:
        count = copy_python_sources(bundle.vllm_root, site / "vllm")
        write_kernel_stubs(site / "vllm")
        write_dist_info(site, "vllm", _installed_version("vllm"))
        progress(
            f"bundle: vllm: {count} Python files (compiled kernels and data left out), "
            f"stubs for {', '.join(VLLM_KERNEL_STUBS)}"
        )
    pin_mtimes(site)
    failed, substituted = {}, {}
    platform_args = [arg for tag in compatible_platforms(platform) for arg in ("--platform", tag)]
    for name, version in sorted(bundle.distributions.items()):
        ok, error = _download(name, f"=={version}", wheels, python_version, platform_args)
        if not ok:  # this exact version has no wheel for the target: take the newest that does
            ok, _ = _download(name, "", wheels, python_version, platform_args)
            if ok:
                got = sorted(
                    wheels.glob(f"{name.replace('-', '_')}-*.whl"), key=lambda p: p.stat().st_mtime
                )
                substituted[name] = {
                    "wanted": version,
                    "shipped": got[-1].name.split("-")[1] if got else "?",
                }
            else:
                failed[name] = error
        note = (
            "ok"
            if name not in failed and name not in substituted
            else f"substituted {substituted[name]['shipped']}"
            if name in substituted
            else "FAILED"
        )
        progress(f"bundle: wheel {name}=={version}: {note}")
    if jit_cache is not None:
        shutil.copytree(jit_cache, out / "jit_cache", dirs_exist_ok=True)
    (out / "bootstrap.sh").write_text(BOOTSTRAP)
    manifest = {
        "python_version": python_version,
        "platform": platform,
        "flashinfer_files": len(bundle.flashinfer_files),
        "vllm": bundle.vllm_root is not None,
        "wheels": bundle.distributions,
        "why": bundle.reasons,
        "wheel_substitutions": substituted,
        "wheel_failures": failed,
        "jit_cache": jit_cache is not None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


BOOTSTRAP = """#!/usr/bin/env bash
# source this file: puts the bundle on PYTHONPATH (wheels unpacked to /tmp/vllm-ep-kit-site).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
site=${VLLM_EP_KIT_SITE:-/tmp/vllm-ep-kit-site}
mkdir -p "$site"
# Install once per wheel set: sourcing again (one shell per test command) is then instant.
if compgen -G "$here/wheels/*.whl" > /dev/null; then
    stamp="$site/.installed-$(cd "$here/wheels" && ls -- *.whl | md5sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        python3 -m pip install --quiet --no-deps --no-index --target "$site" "$here"/wheels/*.whl
        # pip stamps files with the install time; FlashInfer's JIT (ninja) compares header
        # mtimes (tvm-ffi's) with a carried build cache, so give them a fixed old one.
        find "$site" -exec touch -h -d 2000-01-01T00:00:00Z {} +
        touch "$stamp"
    fi
fi
if [ -d "$here/jit_cache" ]; then
    export FLASHINFER_WORKSPACE_BASE="$here/jit_cache"
fi
export PYTHONPATH="$here/site:$site${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=0
"""
