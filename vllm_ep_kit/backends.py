"""vLLM's all-to-all backends and what each needs to run on a machine.

Data first: ``BACKENDS`` states each backend's requirements; ``usability``
evaluates them against the capability probes and returns, per backend,
whether it can run here and, if not, the first unmet requirement.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_ep_kit.testing import probes


@dataclass(frozen=True)
class BackendNeeds:
    name: str
    cpu_ok: bool = False  # runs over gloo with vLLM's CpuCommunicator
    min_gpus: int = 1
    nvlink: bool = False
    mnnvl_handles: bool = False
    modules: tuple[str, ...] = ()  # importable modules it needs (e.g. deep_ep)
    pynccl: bool = False  # on GPUs its collectives go through vLLM's PyNccl
    note: str = ""


BACKENDS: tuple[BackendNeeds, ...] = (
    BackendNeeds("allgather_reducescatter", cpu_ok=True, pynccl=True,
                 note="all-gather dispatch, reduce-scatter combine (the AGRS reference)"),
    BackendNeeds("naive", cpu_ok=True, pynccl=True, note="served by the allgather_reducescatter manager"),
    BackendNeeds("flashinfer_nvlink_two_sided", min_gpus=2, nvlink=True, mnnvl_handles=True,
                 modules=("flashinfer.comm",), note="FlashInfer MnnvlMoe alltoallv"),
    BackendNeeds("flashinfer_nvlink_one_sided", min_gpus=2, nvlink=True, mnnvl_handles=True,
                 modules=("flashinfer.comm",), note="FlashInfer MoeAlltoAll"),
    BackendNeeds("deepep_high_throughput", min_gpus=2, modules=("deep_ep",)),
    BackendNeeds("deepep_low_latency", min_gpus=2, modules=("deep_ep",)),
    BackendNeeds("mori_high_throughput", min_gpus=2, modules=("mori",),
                 note="AMD ROCm backend"),
    BackendNeeds("nixl_ep", min_gpus=2, modules=("nixl",)),
)


@dataclass
class BackendStatus:
    name: str
    usable: bool
    reason: str
    note: str


def _unmet(needs: BackendNeeds) -> str:
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
    vllm_probe = probes.vllm()
    rows = []
    for needs in BACKENDS:
        reason = _unmet(needs)
        if not reason and not vllm_probe.ok:
            reason = vllm_probe.detail
        rows.append(BackendStatus(needs.name, not reason, reason or "ok", needs.note))
    return rows


def usable_backend_names() -> list[str]:
    return [row.name for row in usability() if row.usable]
