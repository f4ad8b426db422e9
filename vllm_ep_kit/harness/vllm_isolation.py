"""Whether a task left vLLM's code changed, so a pooled rank's next task would run it.

A test that replaces ``AgRsAll2AllManager.combine`` (a negative control) must
restore it (``patches.base.swapped``); in a pooled rank a forgotten restore
makes every later task run the mutant.  :func:`snapshot` records the
functions, classes and methods of every imported ``vllm.*`` module (about
0.1 s with vLLM's distributed and fused-MoE packages imported);
:func:`changes` names what a task replaced or removed, and any function from
a test or from this kit found in a vLLM class or module it imported.  The
hotfix plugin's first-use triggers replace themselves by design: a change of
a trigger, and the plugin's wrappers on modules a task imported, are not
reported (a patch applied to a module already imported, and never reverted,
is).
"""

from __future__ import annotations

import sys
import types

from vllm_ep_kit.patches.base import ORIGINAL_ATTR, UNDERLYING_ATTR

_CODE = (types.FunctionType, type, property, staticmethod, classmethod, types.MethodType)
FOREIGN_PREFIXES = ("tests", "vllm_ep_kit", "__main__")


def _vllm_modules():
    for name, module in list(sys.modules.items()):
        if (name == "vllm" or name.startswith("vllm.")) and isinstance(module, types.ModuleType):
            yield name, module


def snapshot() -> dict[str, object]:
    """``"module:Class.attr"`` / ``"module:func"`` -> the object, for vLLM's own code."""
    seen: dict[str, object] = {}
    for name, module in _vllm_modules():
        for attr, value in list(vars(module).items()):
            if not isinstance(value, _CODE) or attr.startswith("__"):
                continue
            seen[f"{name}:{attr}"] = value
            if isinstance(value, type) and value.__module__ == name:
                for cattr, cvalue in list(vars(value).items()):
                    if isinstance(cvalue, _CODE) and not (
                        cattr.startswith("__") and cattr.endswith("__")
                    ):
                        seen[f"{name}:{attr}.{cattr}"] = cvalue
    return seen


def _origin(value) -> str:
    target = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
    return getattr(target, "__module__", "") or ""


def _plugin_made(value) -> bool:
    """A hotfix plugin trigger or patch wrapper (they carry the plugin's markers)."""
    target = getattr(value, "__func__", value)
    return hasattr(target, UNDERLYING_ATTR) or hasattr(target, ORIGINAL_ATTR)


def _foreign(value) -> bool:
    return _origin(value).split(".")[0] in FOREIGN_PREFIXES and not _plugin_made(value)


def changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What differs between two snapshots (empty: vLLM's code is as it was)."""
    found = []
    for key, old in before.items():
        if hasattr(getattr(old, "__func__", old), UNDERLYING_ATTR):
            continue  # the plugin's trigger deciding at first use
        new = after.get(key)
        if new is None:
            found.append(f"{key} removed")
        elif new is not old:
            found.append(f"{key} replaced (by {_origin(new) or type(new).__name__})")
    for key, new in after.items():
        if key not in before and _foreign(new):
            found.append(f"{key} is {_origin(new)}'s")
    return found
