"""Whether each registered backend can run on this machine, and if not, the first unmet need.

Evaluates each backend's :class:`~vllm_ep_kit.backends.spec.Needs` against
the capability probes (each probe runs once per process).
"""

from __future__ import annotations

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


def usability() -> list[BackendStatus]:
    rows = []
    for backend in registry.all_backends():
        reason = unmet(backend.needs)
        if not reason and backend.needs.vllm and not probes.vllm().ok:
            reason = probes.vllm().detail
        rows.append(BackendStatus(backend.name, not reason, reason or "ok", backend.note,
                                  backend.aliases, backend.driven))
    return rows


def usable_backend_names() -> list[str]:
    return [row.name for row in usability() if row.usable]
