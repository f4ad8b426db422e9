"""vLLM hotfixes, shipped as a vLLM general plugin (entry point ``vllm.general_plugins``).

vLLM calls :func:`register` in every process it starts (API server, engine
core, workers).  Each patch probes the installed vLLM's behaviour and applies
itself only where the bug is present; see ``docs/patches.md``.

Configuration:
  ``VLLM_EP_KIT_PATCHES_DISABLE=name[,name]``  never apply these (``all`` for every one)
  ``VLLM_EP_KIT_PATCHES_REQUIRE=name[,name]``  fail fast unless each is applied or not needed
An unknown name in either variable is an error naming the variable.
"""

from __future__ import annotations

import os

from vllm_ep_kit.patches.base import APPLIED, NOT_NEEDED, Patch, PatchStatus

ENV_DISABLE = "VLLM_EP_KIT_PATCHES_DISABLE"
ENV_REQUIRE = "VLLM_EP_KIT_PATCHES_REQUIRE"

_results: list[PatchStatus] | None = None
_results_probed_disabled = True


class PatchConfigError(ValueError):
    """Bad patch configuration in the environment."""


class RequiredPatchError(RuntimeError):
    """A patch listed in VLLM_EP_KIT_PATCHES_REQUIRE could not take effect."""


def all_patches() -> list[Patch]:
    from vllm_ep_kit.patches.vllm.distributed.device_communicators import (
        all2all,
        cuda_communicator,
    )
    from vllm_ep_kit.patches.vllm.model_executor.layers.fused_moe.prepare_finalize import (
        flashinfer_nvlink_two_sided,
    )

    return [*all2all.PATCHES, *flashinfer_nvlink_two_sided.PATCHES, *cuda_communicator.PATCHES]


def _names_from_env(variable: str, known: list[str]) -> set[str]:
    raw = os.environ.get(variable, "")
    names = {part.strip() for part in raw.split(",") if part.strip()}
    if variable == ENV_DISABLE and "all" in names:
        return set(known)
    unknown = sorted(names - set(known))
    if unknown:
        raise PatchConfigError(f"{variable}: unknown patch name(s) {', '.join(unknown)}; "
                               f"known: {', '.join(known)}")
    return names


def apply_all(force: bool = False, probe_disabled: bool = True) -> list[PatchStatus]:
    """Run every patch once per process (again with ``force``); return their statuses.

    ``probe_disabled``: also probe disabled patches, to report ``needed`` or
    ``not needed`` for them (doctor); the plugin entry point does not.
    """
    global _results, _results_probed_disabled
    if _results is not None and not force and (_results_probed_disabled or not probe_disabled):
        return _results
    patches = all_patches()
    known = [p.name for p in patches]
    disabled = _names_from_env(ENV_DISABLE, known)
    required = _names_from_env(ENV_REQUIRE, known)
    both = disabled & required
    if both:
        raise PatchConfigError(f"{ENV_DISABLE} and {ENV_REQUIRE} both name "
                               f"{', '.join(sorted(both))}")
    _results = [p.run(enabled=p.name not in disabled, probe_disabled=probe_disabled)
                for p in patches]
    _results_probed_disabled = probe_disabled
    failed = [r for r in _results if r.name in required and r.status not in (APPLIED, NOT_NEEDED)]
    if failed:
        raise RequiredPatchError("; ".join(f"required patch {r.name} is {r.status}: {r.reason}"
                                           for r in failed))
    return _results


def register() -> None:
    """vLLM general-plugin entry point: runs in every vLLM process (disabled patches unprobed)."""
    apply_all(probe_disabled=False)


def statuses() -> list[PatchStatus] | None:
    """What ran in this process, or None if the plugin has not run here."""
    return _results
