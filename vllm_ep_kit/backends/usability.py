"""Whether each registered backend can run on this machine, and if not, the first unmet need.

Evaluates each backend's :class:`~vllm_ep_kit.backends.spec.Needs` against
the capability probes (each probe runs once per process).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vllm_ep_kit.backends import registry
from vllm_ep_kit.backends.spec import Needs
from vllm_ep_kit.testing import probes


@dataclass
class BackendStatus:
    name: str
    usable: bool
    reason: str
    note: str
    aliases: tuple[str, ...] = ()
    driven: bool = False  # this kit has a transport for it (check / bench / layer cells)
    software: str = "ok"  # what the installed packages lack for it, whatever the hardware


def unmet(needs: Needs) -> str:
    """The first of ``needs`` this machine lacks, or ""."""
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
    for module in needs.modules:
        if module == "flashinfer.comm":
            fi = probes.flashinfer_comm()
            if not fi.ok:
                return fi.detail
        elif not probes.module_available(module):
            return f"Python module {module!r} not installed"
    if needs.pynccl and not probes.vllm_pynccl().ok:
        return probes.vllm_pynccl().detail
    return ""


def software_gap(backend) -> str:
    """What the installed packages lack for ``backend`` ("" if nothing), on any machine:
    its modules, then the installed vLLM's own verdict (``Backend.vllm_has``), which
    knows what that release's manager imports (e.g. ``flashinfer.moe_ep`` from 0.33)."""
    for module in backend.needs.modules:
        if module != "flashinfer.comm" and not probes.module_available(module):
            return f"Python module {module!r} not installed"
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
    return "" if has else (f"vLLM's {function}() is False: the installed FlashInfer lacks "
                           "what this vLLM's manager uses")


def usability() -> list[BackendStatus]:
    rows = []
    for backend in registry.all_backends():
        software = software_gap(backend)
        reason = software or unmet(backend.needs)
        if not reason and backend.needs.vllm and not probes.vllm().ok:
            reason = probes.vllm().detail
        rows.append(BackendStatus(backend.name, not reason, reason or "ok", backend.note,
                                  backend.aliases, backend.driven, software or "ok"))
    return rows


def usable_backend_names() -> list[str]:
    return [row.name for row in usability() if row.usable]
