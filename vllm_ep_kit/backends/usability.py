"""Whether each registered backend can run on this machine, and if not, the first unmet need.

Evaluates each backend's :class:`~vllm_ep_kit.backends.spec.Needs` against
the capability probes (each probe runs once per process).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import Backend, Needs
from vllm_ep_kit.harness import probes


@dataclass
class BackendStatus:
    name: str
    usable: bool
    reason: str
    note: str
    aliases: tuple[str, ...] = ()
    driven: bool = False  # this kit has a transport for it (check / bench / layer cells)
    # what the installed packages lack for it, whatever the hardware ("not checked": the
    # hardware already rules it out and the caller did not ask, see ``usability``)
    software: str = "ok"
    formats: tuple[str, ...] = ()  # the activation formats vLLM moves through it as they are


def unmet(needs: Needs) -> str:
    """The first of ``needs`` this machine lacks, or ""."""
    if needs.rocm:
        return "needs AMD GPUs under ROCm (this kit probes NVIDIA hosts)"
    gpu_count = probes.gpu_count()
    if gpu_count == 0:
        return "" if needs.cpu_ok else "needs CUDA GPUs; none visible"
    if gpu_count < needs.min_gpus:
        return f"needs {needs.min_gpus} GPUs, {gpu_count} visible"
    if needs.nvlink and not probes.nvlink().ok:
        return f"needs NVLink peer access: {probes.nvlink().detail}"
    if needs.mnnvl_handles:
        handles = probes.mnnvl_handles()
        if not handles.ok:
            return f"needs fabric or POSIX-fd handles: {handles.detail}"
        if not handles.data.get("fabric") and not probes.handle_exchange().ok:
            return f"POSIX-fd handle exchange: {probes.handle_exchange().detail}"
    missing = missing_module(needs.modules)
    if missing:
        return missing
    if needs.multicast:
        return (
            "needs NVSwitch multicast, which this kit does not probe (vLLM checks it at start-up)"
        )
    if needs.pynccl and not probes.vllm_pynccl().ok:
        return probes.vllm_pynccl().detail
    return ""


def missing_module(modules: Iterable[str]) -> str:
    """The first of ``modules`` that does not import here, or ""."""
    for module in modules:
        if module == "flashinfer.comm":
            fi = probes.flashinfer_comm()
            if not fi.ok:
                return fi.detail
        elif not probes.module_available(module):
            return f"Python module {module!r} not installed"
    return ""


def software_gap(backend: Backend) -> str:
    """What the installed packages lack for ``backend`` ("" if nothing), on any machine:
    its modules, then the installed vLLM's own verdict (``Backend.vllm_has``), which
    knows what that release's manager imports (e.g. ``flashinfer.moe_ep`` from 0.33)."""
    # FlashInfer's comm package is left to vLLM's verdict, which names the check that fails
    missing = missing_module([m for m in backend.needs.modules if m != "flashinfer.comm"])
    if missing:
        return missing
    if not backend.vllm_has or not probes.vllm().ok:
        return ""
    module_name, _, function = backend.vllm_has.partition(":")
    try:
        answer = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError):
        return ""  # this vLLM has no such check: nothing it says is missing
    try:
        has = bool(answer())
    except Exception as exc:  # noqa: BLE001 (a check that raises is a "no" with its reason)
        return f"vLLM's {function}() raised {type(exc).__name__}: {exc}"
    if has:
        return ""
    return (
        f"vLLM's {function}() is False: the installed FlashInfer lacks "
        "what this vLLM's manager uses"
    )


def usability(software: bool = False) -> list[BackendStatus]:
    """Each backend's row.  The installed vLLM's software verdict (which imports FlashInfer's
    kernel modules, seconds on a CPU machine) is asked only where the hardware could run the
    backend, or for every backend with ``software=True`` (doctor's column)."""
    rows = []
    for backend in registry.all_backends():
        reason = unmet(backend.needs)
        gap = software_gap(backend) if software or not reason else None
        reason = gap or reason
        if not reason and backend.needs.vllm and not probes.vllm().ok:
            reason = probes.vllm().detail
        rows.append(
            BackendStatus(
                backend.name,
                not reason,
                reason or "ok",
                backend.note,
                backend.aliases,
                backend.driven,
                "not checked" if gap is None else gap or "ok",
                backend.formats,
            )
        )
    return rows


def usable_backend_names() -> list[str]:
    return [row.name for row in usability() if row.usable]
