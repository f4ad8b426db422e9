"""Decide a patch at its first use, not when the plugin loads.

vLLM loads its general plugins in every process it starts (API server, engine
core, workers), but only a worker constructs the communicators these patches
fix, and probing imports vLLM's communicators, fused-MoE layers and FlashInfer
(about 4,700 modules, seconds to a minute).  So the plugin only *arms* a
patch: a post-import hook (``wrapt``) waits until vLLM itself imports the
patched module, then each of the patch's trigger attributes (the patched
method or function) is replaced by a trigger whose first call decides the
patch (probe, apply, verify) and then makes the call through whatever the
attribute now is (the fix, or the original).  While one thread decides, its
own calls (the probe's) reach the originals and every other thread's call
waits for the verdict: no call runs unfixed code once the decision started.
``base.wrap`` wraps a trigger's original, so a fix replaces the trigger.

A trigger target is ``"module:Qualified.name"`` and must be a plain function
(a module's function or a class's method).  If none of a patch's targets in a
module exists, the code is not what the patch knows: it is decided at once
(its probe says so).
"""

from __future__ import annotations

import functools
import inspect
import threading

import wrapt

from vllm_ep_kit.patches.base import UNDERLYING_ATTR

_TRIGGER_ATTR = "__vllm_ep_kit_trigger__"


def split_target(target: str) -> tuple[str, list[str]]:
    module, sep, qualname = target.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"trigger {target!r}: expected 'module:Qualified.name'")
    return module, qualname.split(".")


def _is_trigger(value) -> bool:
    return getattr(value, _TRIGGER_ATTR, None) is True


def _function_owner(module, path: list[str]):
    """What holds the plain function ``path`` names in ``module`` (a class or the module),
    or None where there is no such function."""
    owner = module
    for part in path[:-1]:
        owner = getattr(owner, part, None)
    return owner if inspect.isfunction(getattr(owner, path[-1], None)) else None


class Armed:
    """One patch waiting for its first use; ``fire()`` decides it exactly once."""

    decided = False  # set by fire() or disarm(), never cleared
    _decider: int | None = None  # the thread id while a decision runs (set on the instance)

    def __init__(self, targets: tuple[str, ...], decide):
        self.targets, self._decide = targets, decide
        self._lock = threading.RLock()
        self._installed: list[tuple[object, str, object]] = []  # owner, attr, saved or None

    def arm(self) -> None:
        # A post-import hook fires at once if the module is already imported.
        by_module: dict[str, list[list[str]]] = {}
        for target in self.targets:
            module, path = split_target(target)
            by_module.setdefault(module, []).append(path)
        for module, paths in by_module.items():
            wrapt.register_post_import_hook(functools.partial(self._install, paths), module)

    def _install(self, paths: list[list[str]], module) -> None:
        with self._lock:
            if self.decided:
                return
            owners = [(_function_owner(module, path), path[-1]) for path in paths]
            found = [(owner, attr) for owner, attr in owners if owner is not None]
            for owner, attr in found:
                self._wrap(owner, attr)
        if not found:
            self.fire()  # nothing to wait for: the probe reports the unknown shape

    def _wrap(self, owner, attr: str) -> None:
        current = getattr(owner, attr)
        if _is_trigger(current):
            return
        own = vars(owner).get(attr)  # None: a class inherited it
        armed = self

        @functools.wraps(current)  # signature tools see the original's parameters
        def trigger(*args, **kwargs):
            if armed._decider != threading.get_ident():
                armed.fire()  # waits while another thread decides
                now = getattr(owner, attr)
                if not _is_trigger(now):
                    return now(*args, **kwargs)
            return current(*args, **kwargs)  # the probe's own calls: the original

        setattr(trigger, _TRIGGER_ATTR, True)
        setattr(trigger, UNDERLYING_ATTR, current)
        self._installed.append((owner, attr, own))
        setattr(owner, attr, trigger)

    def disarm(self) -> None:
        """Put every original back (the decision then happens elsewhere, or never)."""
        with self._lock:
            self.decided = True
            for owner, attr, own in reversed(self._installed):
                if not _is_trigger(getattr(owner, attr, None)):
                    continue  # replaced since by someone else: leave theirs
                if own is None:  # the class inherited it
                    delattr(owner, attr)
                else:
                    setattr(owner, attr, own)
            self._installed.clear()

    def fire(self) -> None:
        with self._lock:
            if self.decided:
                return
            self.decided, self._decider = True, threading.get_ident()
            try:
                self._decide()
            finally:
                del self._decider  # the class's None again: no thread decides
                self.disarm()  # triggers the fix did not replace
