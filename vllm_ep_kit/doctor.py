"""``doctor``: what works on this machine, as data (``cli`` renders it)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict

from vllm_ep_kit import backends
from vllm_ep_kit.testing import probes


def collect() -> dict:
    """Run every probe once; return a JSON-ready report."""
    checks = [
        probes.gpus(),
        probes.nvlink(),
        probes.mnnvl_handles(),
        probes.handle_exchange(),
        probes.ptrace(),
        probes.flashinfer_comm(),
        probes.vllm(),
    ]
    if probes.gpu_count():
        checks += [probes.vllm_pynccl(), probes.vllm_moe_kernels()]
    return {
        "host": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": probes.versions(),
        "capabilities": [c.as_dict() for c in checks],
        "backends": [asdict(b) for b in backends.usability(software=True)],
        "patches": _patch_statuses(),
    }


def _patch_statuses() -> list[dict]:
    """What the hotfix plugin does with the installed vLLM (probed in this process)."""
    from vllm_ep_kit import patches

    try:
        return [s.as_dict() for s in patches.apply_all()]
    except (patches.PatchConfigError, patches.RequiredPatchError) as exc:
        return [
            {
                "name": "(configuration)",
                "status": "error",
                "reason": str(exc),
                "upstream": "",
                "affected": "",
            }
        ]
