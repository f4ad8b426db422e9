"""vLLM hotfixes, shipped as a vLLM general plugin (entry point ``vllm.general_plugins``).

vLLM calls :func:`register` in every process it starts (API server, engine
core, workers).  Each patch probes the installed vLLM's behaviour and applies
itself only where the bug is present; see ``docs/patches.md``.  The plugin
decides each patch at the first use of the code it patches (``lazy.py``), so a
process that never builds an EP communicator pays almost nothing; ``doctor``
and :func:`apply_all` decide every patch at once.

Configuration:
  ``VLLM_EP_KIT_PATCHES_DISABLE=name[,name]``  never apply these (``all`` for every one)
  ``VLLM_EP_KIT_PATCHES_REQUIRE=name[,name]``  fail fast unless each is applied or not needed
      (a required patch is decided when the plugin loads, not at first use)
An unknown name in either variable is an error naming the variable.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from vllm_ep_kit.patches.base import (
    APPLIED,
    DISABLED,
    NOT_NEEDED,
    PENDING,
    REFUSED,
    Patch,
    PatchStatus,
    logger,
    missing_package,
)

ENV_DISABLE = "VLLM_EP_KIT_PATCHES_DISABLE"
ENV_REQUIRE = "VLLM_EP_KIT_PATCHES_REQUIRE"

_results: list[PatchStatus] | None = None
_results_probed_disabled = True
_armed: dict = {}  # patch name -> lazy.Armed, while the plugin waits for its first use


class PatchConfigError(ValueError):
    """Bad patch configuration in the environment."""


class RequiredPatchError(RuntimeError):
    """A patch listed in VLLM_EP_KIT_PATCHES_REQUIRE could not take effect."""


def all_patches() -> list[Patch]:
    """Every patch: the ``PATCHES`` of each module under ``patches/vllm/`` (one module per
    patched vLLM module, at vLLM's path), in module name order.  Adding a hotfix is adding
    its module, or its patch to the module's ``PATCHES`` (docs/contributing.md)."""
    from vllm_ep_kit.patches import vllm as mirror

    found: list[Patch] = []
    modules = pkgutil.walk_packages(mirror.__path__, f"{mirror.__name__}.")
    for module in sorted(modules, key=lambda module: module.name):
        if not module.ispkg:
            found.extend(importlib.import_module(module.name).PATCHES)
    return found


def _names_from_env(variable: str, known: list[str]) -> set[str]:
    raw = os.environ.get(variable, "")
    names = {part.strip() for part in raw.split(",") if part.strip()}
    if variable == ENV_DISABLE and "all" in names:
        return set(known)
    unknown = sorted(names - set(known))
    if unknown:
        raise PatchConfigError(
            f"{variable}: unknown patch name(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return names


def _configuration(patches: list[Patch]) -> tuple[set[str], set[str]]:
    known = [p.name for p in patches]
    disabled = _names_from_env(ENV_DISABLE, known)
    required = _names_from_env(ENV_REQUIRE, known)
    both = disabled & required
    if both:
        raise PatchConfigError(
            f"{ENV_DISABLE} and {ENV_REQUIRE} both name {', '.join(sorted(both))}"
        )
    return disabled, required


def disabled_names() -> set[str]:
    """The patches the environment disables, read as the plugin reads it (``all``: every
    one); PatchConfigError for a configuration the plugin would refuse."""
    return _configuration(all_patches())[0]


def _check_required(results: list[PatchStatus], required: set[str]) -> None:
    failed = [r for r in results if r.name in required and r.status not in (APPLIED, NOT_NEEDED)]
    if failed:
        raise RequiredPatchError(
            "; ".join(f"required patch {r.name} is {r.status}: {r.reason}" for r in failed)
        )


def _disarm_all() -> None:
    for armed in _armed.values():
        armed.disarm()
    _armed.clear()


def apply_all(force: bool = False, probe_disabled: bool = True) -> list[PatchStatus]:
    """Decide every patch now, once per process (again with ``force``); return their statuses.

    ``probe_disabled``: also probe disabled patches, to report ``needed`` or
    ``not needed`` for them (doctor).  Patches the plugin armed are disarmed
    and decided here.
    """
    global _results, _results_probed_disabled
    if (
        _results is not None
        and not force
        and not _armed
        and (_results_probed_disabled or not probe_disabled)
    ):
        return _results
    _disarm_all()
    patches = all_patches()
    disabled, required = _configuration(patches)
    _results = [
        p.run(enabled=p.name not in disabled, probe_disabled=probe_disabled) for p in patches
    ]
    _results_probed_disabled = probe_disabled
    _check_required(_results, required)
    return _results


def _decide_at_first_use(index: int, patch: Patch) -> None:
    """What a trigger runs: the patch's verdict replaces its ``pending`` status."""
    try:
        verdict = patch.run(enabled=True)
    except Exception as exc:  # noqa: BLE001 (a bug of ours must not stop the user's vLLM)
        logger.exception("vllm-ep-kit patch %s: deciding at first use failed", patch.name)
        verdict = patch.status(
            REFUSED, f"deciding at first use failed: {type(exc).__name__}: {exc}"
        )
    _armed.pop(patch.name, None)
    if _results is not None and index < len(_results) and _results[index].name == patch.name:
        _results[index] = verdict


def register() -> None:
    """vLLM general-plugin entry point, in every vLLM process: arm each enabled patch to
    be decided at the first use of what it patches; decide required ones now."""
    global _results, _results_probed_disabled
    if _results is not None:
        return
    patches = all_patches()
    disabled, required = _configuration(patches)
    _results, _results_probed_disabled = [], False
    for index, patch in enumerate(patches):
        if patch.name in disabled:
            verdict = patch.status(DISABLED, "disabled by configuration (not probed)")
        elif patch.name in required or not patch.triggers or missing_package(*patch.requires):
            verdict = patch.run(enabled=True)  # now (a missing package: says which)
        else:
            verdict = patch.status(
                PENDING, "decided at the first call of " + " or ".join(patch.triggers)
            )
        _results.append(verdict)
        if verdict.status == PENDING:
            from vllm_ep_kit.patches import lazy  # wrapt: only where something waits

            armed = lazy.Armed(patch.triggers, lambda i=index, p=patch: _decide_at_first_use(i, p))
            _armed[patch.name] = armed
            armed.arm()  # may decide at once (module already imported, target missing)
    _check_required(_results, required)


def statuses() -> list[PatchStatus] | None:
    """What ran in this process, or None if the plugin has not run here."""
    return _results
