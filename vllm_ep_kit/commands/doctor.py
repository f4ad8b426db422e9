"""``doctor``: what works on this machine, as data (``cli`` renders it)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict

from vllm_ep_kit import backends
from vllm_ep_kit.harness import probes


def collect() -> dict:
    """Run every probe once; return a JSON-ready report."""
    with probes.library_notes_held_back():
        return _collect()


def _collect() -> dict:
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
        "accepted": _accepted_names(),
        "patches": _patch_statuses(),
    }


def _accepted_names() -> dict:
    """The ``--all2all-backend`` names the installed vLLM accepts, as it treats them."""
    from vllm_ep_kit.backends import accepted

    try:
        rows = accepted.accepted()
    except accepted.NotReadable as exc:
        return {"readable": False, "why": str(exc), "names": []}
    known = set(backends.known_names())
    return {
        "readable": True,
        "why": "",
        "names": [
            {
                **asdict(row),
                "note": row.describe(),
                "kit_knows": row.name in known,
                **_vllm_rules(row.runs_as),
            }
            for row in rows
        ],
    }


def _vllm_rules(name: str) -> dict:
    """What the installed vLLM's configs do with ``name`` on a CUDA host: whether
    microbatching (--enable-dbo) takes it, and whether CUDA graphs stay on with DP 2
    (None: vLLM does not say, e.g. a backend it refuses without a MoE kernel)."""
    from vllm_ep_kit.commands.preflight import vllm_side

    try:
        dbo = vllm_side.takes_microbatching(name)
        graphs: bool | None = vllm_side.graphs_kept(name, data_parallel_size=2)
    except Exception:  # noqa: BLE001 (a release whose configs differ: the row says so)
        dbo, graphs = None, None
    stated = backends.get(name).graphs if name in backends.known_names() else ""
    return {"dbo": dbo, "cuda_graphs": graphs and not stated, "cuda_graphs_note": stated}


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
