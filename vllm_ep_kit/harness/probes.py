"""Capability probes: what this machine can run, each with the reason why not.

Used by the pytest markers (skip with a precise reason) and by ``doctor``.
Every probe returns a :class:`Probe`; none raises.  Probes that need CUDA use
NVML and the CUDA driver API directly so the calling process never creates a
CUDA context (spawned ranks must be able to own their GPUs).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

CAP_SYS_PTRACE_BIT = 19
# pidfd_open / pidfd_getfd share numbers across x86_64 and aarch64 (asm-generic).
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438


@dataclass
class Probe:
    name: str
    ok: bool
    detail: str
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def library_notes_held_back() -> Iterator[None]:
    """What the libraries log at warning level or below while a command imports them
    (vLLM's platform notes on a host without its compiled ops, torch's guess of CUDA_HOME)
    stays out of the output: doctor's and preflight's output is their report, which says
    what those notes are about.  Errors still get through."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------- versions


def package_version(dist_name: str) -> str | None:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def own_version() -> str:
    """This kit's version: its package metadata, else the source tree it runs from.

    A checkout put on ``PYTHONPATH`` (as on the air-gapped GPU hosts) has no
    metadata; doctor said ``none`` there.
    """
    installed = package_version("vllm-ep-kit")
    if installed:
        return installed
    import vllm_ep_kit

    return f"{vllm_ep_kit.__version__} (source tree, not installed)"


def versions() -> dict[str, str | None]:
    info = {
        "python": platform.python_version(),
        "vllm-ep-kit": own_version(),
        "torch": package_version("torch"),
        "vllm": package_version("vllm") or vllm().data.get("version"),
        "flashinfer-python": (
            package_version("flashinfer-python") or flashinfer_comm().data.get("version")
        ),
    }
    try:
        import torch

        info["torch.cuda"] = torch.version.cuda
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        info["nccl"] = ".".join(map(str, nccl)) if nccl else None
    except Exception:  # noqa: BLE001 (a probe never raises)
        info["torch.cuda"] = None
    return info


# --------------------------------------------------------------------------- GPUs


@functools.cache
def gpus() -> Probe:
    """GPU count and names through NVML (no CUDA context)."""
    try:
        import pynvml
    except ImportError:
        return Probe("gpus", False, "nvidia-ml-py (pynvml) not installed", {"count": 0})
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 (any NVML failure: no usable driver)
        return Probe("gpus", False, f"no NVIDIA driver ({exc})", {"count": 0})
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        names = [_str(pynvml.nvmlDeviceGetName(h)) for h in handles]
        memory = [pynvml.nvmlDeviceGetMemoryInfo(h) for h in handles]
        driver = _str(pynvml.nvmlSystemGetDriverVersion())
    finally:
        pynvml.nvmlShutdown()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        count = min(count, len(ids))
        names, memory = names[:count], memory[:count]
    detail = f"{count} GPU(s)" + (f": {', '.join(names)}; driver {driver}" if count else "")
    data = {
        "count": count,
        "names": names,
        "driver": driver,
        "total_bytes": [int(m.total) for m in memory],
        "free_bytes": [int(m.free) for m in memory],
    }
    return Probe("gpus", count > 0, detail, data)


def gpu_count() -> int:
    return gpus().data.get("count", 0)


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@functools.cache
def nvlink() -> Probe:
    """Active NVLinks per GPU (NVML) and peer access between every GPU pair."""
    count = gpu_count()
    if count < 2:
        return Probe("nvlink", False, f"needs 2 GPUs, {count} visible", {"links": {}})
    import pynvml

    links: dict[int, int] = {}
    pynvml.nvmlInit()
    try:
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            active = 0
            for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
                try:
                    if pynvml.nvmlDeviceGetNvLinkState(handle, link):
                        active += 1
                except pynvml.NVMLError:
                    break
            links[i] = active
    finally:
        pynvml.nvmlShutdown()
    peers = _peer_access_matrix(count)
    all_peer = all(peers[i][j] for i in range(count) for j in range(count) if i != j)
    ok = all(n > 0 for n in links.values()) and all_peer
    detail = (
        f"active NVLinks per GPU {links}; peer access between all pairs: "
        f"{'yes' if all_peer else 'no'}"
    )
    return Probe("nvlink", ok, detail, {"links": links, "peer_access": peers})


def _peer_access_matrix(count: int) -> list[list[bool]]:
    drv = _cuda_driver()
    if drv is None:
        return [[False] * count for _ in range(count)]
    matrix = []
    for i in range(count):
        row = []
        for j in range(count):
            if i == j:
                row.append(True)
                continue
            err, can = drv.cuDeviceCanAccessPeer(_dev(drv, i), _dev(drv, j))
            row.append(bool(can) and int(err) == 0)
        matrix.append(row)
    return matrix


def _cuda_driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        return None
    (err,) = driver.cuInit(0)
    return driver if int(err) == 0 else None


def _dev(drv, index: int):
    err, dev = drv.cuDeviceGet(index)
    if int(err) != 0:
        raise RuntimeError(f"cuDeviceGet({index}) failed: {err}")
    return dev


@functools.cache
def mnnvl_handles() -> Probe:
    """Whether GPU memory can be shared by fabric handle or by POSIX fd."""
    if gpu_count() < 1:
        return Probe("mnnvl_handles", False, "no GPU visible", {})
    drv = _cuda_driver()
    if drv is None:
        return Probe(
            "mnnvl_handles",
            False,
            "cuda-bindings missing or cuInit failed: cannot query handle types",
            {},
        )
    attr = drv.CUdevice_attribute
    dev = _dev(drv, 0)
    found = {}
    for key, name in (
        ("fabric", "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED"),
        ("posix_fd", "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED"),
    ):
        err, value = drv.cuDeviceGetAttribute(getattr(attr, name), dev)
        found[key] = bool(value) and int(err) == 0
    ok = found["fabric"] or found["posix_fd"]
    detail = (
        f"fabric handles: {'yes' if found['fabric'] else 'no'}; "
        f"POSIX-fd handles: {'yes' if found['posix_fd'] else 'no'}"
    )
    if not found["fabric"] and found["posix_fd"]:
        detail += " (same-host exchange of POSIX fds: see handle_exchange)"
    return Probe("mnnvl_handles", ok, detail, found)


# --------------------------------------------------------------------------- ptrace


def _cap_eff() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _yama_scope() -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


_GETFD_CHILD = rf"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
pidfd = libc.syscall({SYS_PIDFD_OPEN}, pid, 0)
if pidfd < 0:
    print("pidfd_open", os.strerror(ctypes.get_errno())); sys.exit(2)
fd = libc.syscall({SYS_PIDFD_GETFD}, pidfd, 0, 0)
if fd < 0:
    print("pidfd_getfd", os.strerror(ctypes.get_errno())); sys.exit(3)
print("ok")
"""


@functools.cache
def ptrace() -> Probe:
    """CAP_SYS_PTRACE, and whether pidfd_getfd works between sibling processes.

    FlashInfer's POSIX-fd handle exchange takes a peer's fd with pidfd_getfd,
    which needs ptrace access to a process that is not an ancestor: test
    exactly that, between two children of this process.
    """
    has_cap = bool(_cap_eff() >> CAP_SYS_PTRACE_BIT & 1)
    data = {"cap_sys_ptrace": has_cap, "yama_ptrace_scope": _yama_scope()}
    if sys.platform != "linux":
        return Probe("ptrace", False, "pidfd_getfd needs Linux", data)
    sibling = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _GETFD_CHILD, str(sibling.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        sibling.kill()
        sibling.wait()
    works = result.returncode == 0
    data["pidfd_getfd"] = works
    reason = result.stdout.strip() or result.stderr.strip()[-200:]
    detail = (
        f"CAP_SYS_PTRACE {'present' if has_cap else 'missing'}; "
        f"yama ptrace_scope {data['yama_ptrace_scope']}; pidfd_getfd between "
        f"siblings {'works' if works else 'fails: ' + reason}"
    )
    return Probe("ptrace", works, detail, data)


# --------------------------------------------------------------------------- handle exchange

_SCM_RIGHTS_CHILD = r"""
import os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
read_end, write_end = os.pipe()
os.write(write_end, b"ok")
socket.send_fds(sock, [b"fd"], [read_end])
"""


def flashinfer_fd_exchange() -> str | None:
    """How the installed FlashInfer passes POSIX-fd handles between ranks, read from its code.

    ``"scm_rights"`` where ``flashinfer.comm.mnnvl`` takes its peers' fds from
    FlashInfer's Unix-socket helper (``from .fd_exchange import exchange_fds``:
    no privilege needed, every rank on one host), ``"pidfd_getfd"`` otherwise
    (older releases: the receiver takes the fd from the sender with
    ``pidfd_getfd``, which needs ptrace rights), ``None`` where FlashInfer is
    not installed.  The source is parsed, not imported (importing
    ``flashinfer.comm`` costs seconds).
    """
    import ast

    spec = importlib.util.find_spec("flashinfer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        source = os.path.join(folder, "comm", "mnnvl.py")
        if os.path.isfile(source):
            break
    else:
        return None
    with open(source, encoding="utf-8", errors="replace") as f:
        tree = ast.parse(f.read(), source)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").endswith("fd_exchange")
            and any(alias.name == "exchange_fds" for alias in node.names)
        ):
            return "scm_rights"
    return "pidfd_getfd"


def _scm_rights_works() -> tuple[bool, str]:
    """Pass a pipe's fd from a child process over a Unix socket (SCM_RIGHTS) and read it."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _SCM_RIGHTS_CHILD, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            capture_output=True,
            text=True,
            timeout=30,
        )
        theirs.close()
        if child.returncode:
            return False, child.stderr.strip()[-200:]
        ours.settimeout(10)
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        if not fds:
            return False, "no fd received"
        try:
            got = os.read(fds[0], 2)
        finally:
            os.close(fds[0])
        return got == b"ok", f"read {got!r} from the received fd"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        ours.close()
        theirs.close()


@functools.cache
def handle_exchange() -> Probe:
    """Whether the installed FlashInfer can exchange POSIX-fd GPU memory handles here.

    FlashInfer 0.6.16 and later send them over a Unix socket (SCM_RIGHTS), which
    needs no CAP_SYS_PTRACE; older releases use ``pidfd_getfd`` (see ``ptrace``).
    Which one runs is read from the installed FlashInfer's code, then that
    mechanism is tried between two processes.
    """
    mechanism = flashinfer_fd_exchange()
    data = {"mechanism": mechanism}
    if mechanism is None:
        return Probe("handle_exchange", False, "flashinfer-python not installed", data)
    if mechanism == "scm_rights":
        works, why = _scm_rights_works()
        detail = (
            "FlashInfer passes fds over a Unix socket (SCM_RIGHTS, no CAP_SYS_PTRACE "
            "needed; ranks on one host): " + ("works" if works else f"fails: {why}")
        )
        return Probe("handle_exchange", works, detail, data)
    taken = ptrace()
    detail = f"FlashInfer takes fds with pidfd_getfd (needs ptrace rights): {taken.detail}"
    return Probe("handle_exchange", taken.ok, detail, data)


# --------------------------------------------------------------------------- packages


def _importable(label: str, dist_name: str, module: str, what: str) -> Probe:
    """Import ``module``; the version from package metadata, else from the module.

    Metadata alone is not enough: a ``vllm-ep-kit bundle`` puts sources on
    PYTHONPATH without dist-info, and an installed package may fail to import.
    """
    import importlib

    version = package_version(dist_name)
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 (report the import failure itself)
        if (
            version is None
            and isinstance(exc, ModuleNotFoundError)
            and exc.name == module.split(".")[0]
        ):
            return Probe(label, False, f"{dist_name} not installed", {})
        return Probe(
            label,
            False,
            f"{dist_name} {version or '(no metadata)'}: import {module} "
            f"failed: {type(exc).__name__}: {exc}",
            {"version": version},
        )
    root = importlib.import_module(module.split(".")[0])
    version = version or getattr(root, "__version__", None) or "unknown version"
    return Probe(label, True, f"{dist_name} {version}: {what}", {"version": version})


@functools.cache
def flashinfer_comm() -> Probe:
    return _importable(
        "flashinfer", "flashinfer-python", "flashinfer.comm", "flashinfer.comm imports"
    )


@functools.cache
def vllm() -> Probe:
    return _importable("vllm", "vllm", "vllm.distributed.parallel_state", "imports")


@functools.cache
def vllm_pynccl() -> Probe:
    """vLLM's own NCCL wrapper (PyNccl) accepts this host's NCCL library.

    On CUDA, vLLM's device communicators do all-gatherv / reduce-scatterv
    through PyNccl; if its loader rejects the NCCL library (e.g. vLLM 0.32.0
    requires ``ncclCommSuspend``, NCCL >= 2.29.7, while torch 2.11 ships 2.28.9)
    PyNccl is silently disabled and the AGRS all-to-all fails an assert.
    """
    import ctypes

    label = "vllm pynccl"
    try:
        from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary
        from vllm.utils.nccl import find_nccl_library
    except Exception as exc:  # noqa: BLE001 (older vLLM layouts, or vLLM not importable)
        return Probe(
            label, False, f"vLLM's NCCL wrapper not importable: {type(exc).__name__}: {exc}"
        )
    try:
        so_file = find_nccl_library()
        lib = ctypes.CDLL(so_file)
    except (ValueError, OSError) as exc:
        return Probe(label, False, f"no NCCL library for vLLM: {exc}")
    version = ctypes.c_int()
    nccl = "unknown NCCL version"
    if hasattr(lib, "ncclGetVersion") and lib.ncclGetVersion(ctypes.byref(version)) == 0:
        code = version.value
        nccl = f"NCCL {code // 10000}.{code // 100 % 100}.{code % 100}"
    missing = [f.name for f in NCCLLibrary.exported_functions if not hasattr(lib, f.name)]
    try:
        NCCLLibrary(so_file)
    except Exception as exc:  # noqa: BLE001 (the loader's own verdict)
        return Probe(
            label,
            False,
            f"vLLM's PyNccl rejects {so_file} ({nccl}): "
            f"{type(exc).__name__}: {exc}; functions it lacks: {', '.join(missing)}; "
            "fix: point VLLM_NCCL_SO_PATH at a newer libnccl.so.2 (e.g. from "
            "`pip install nvidia-nccl-cu13`, nvidia/nccl/lib/)",
            {"nccl": nccl, "missing": missing},
        )
    return Probe(
        label,
        True,
        f"{so_file} ({nccl}) has what vLLM's PyNccl needs"
        + (f" (optional ones absent: {', '.join(missing)})" if missing else ""),
        {"nccl": nccl, "missing": missing},
    )


@functools.cache
def vllm_moe_kernels_missing() -> str:
    """Why vLLM's MoE expert kernels cannot run in this process ("" when they can).

    They need a CUDA GPU, Triton, and vLLM's compiled ``_moe_C`` / ``_C`` ops
    (a sources-only vLLM, e.g. this kit's bundle, has stand-ins instead).
    """
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        from vllm.platforms import current_platform
        from vllm.triton_utils import HAS_TRITON

        current_platform.import_kernels()  # imports vLLM's compiled extensions where present
    except Exception as exc:  # noqa: BLE001 (a probe reports, whatever vLLM raised)
        return f"vLLM's platform or kernels do not import: {type(exc).__name__}: {exc}"
    if not HAS_TRITON:
        return "vLLM sees no usable Triton (its fused_experts GEMMs are Triton kernels)"
    needed = {
        "_moe_C": ("moe_align_block_size", "topk_softmax", "moe_sum"),
        "_C": ("silu_and_mul",),
    }
    absent = [
        f"{ns}.{op}"
        for ns, ops in needed.items()
        for op in ops
        if not hasattr(getattr(torch.ops, ns), op)
    ]
    if absent:
        return (
            "vLLM's compiled MoE ops are not registered ("
            + ", ".join(absent)
            + "): a sources-only vLLM; install its _C / _moe_C libraries "
            "(scripts/gpu/run_with_bundle.sh VLLM_EP_KIT_VLLM_KERNELS)"
        )
    return ""


def vllm_moe_kernels() -> Probe:
    """vLLM's compiled MoE ops and Triton are usable, so its expert kernels can run here.

    vLLM's wheels build ``_C`` / ``_moe_C`` on the libtorch stable ABI for a
    newer torch than many hosts have; measured on an H200 with torch 2.11, vLLM
    0.32.0's load and run (1x H200, 2026-11-24).
    """
    missing = vllm_moe_kernels_missing()
    return Probe(
        "vllm moe kernels",
        not missing,
        missing or "vLLM's compiled MoE ops and Triton load: fused_experts can run",
    )


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
