"""What every hotfix is: a behavioural probe, an apply step, and a verdict.

A patch never trusts a version string.  ``probe()`` exercises the installed
vLLM code and answers "bug present", "bug absent", or raises
:class:`UnrecognisedShape` when the code is not what the patch knows; only a
present bug is patched, and the probe is run again afterwards to verify the
fix took (else the patch is undone and refused).  Depends on vLLM only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger("vllm_ep_kit.patches")

NOT_NEEDED = "not needed"
APPLIED = "applied"
NEEDED = "needed"  # bug present, patch disabled by configuration
REFUSED = "refused"  # bug status unknown or fix could not be verified: nothing changed
DISABLED = "disabled"
PENDING = "pending"  # armed by the plugin: decided at the first use of a trigger (lazy.py)


class UnrecognisedShape(Exception):
    """The installed vLLM code differs from what the patch was written for."""


@dataclass
class PatchStatus:
    name: str
    status: str
    reason: str
    upstream: str
    affected: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Serving:
    """What a serve command sets up, as far as a bug's reach depends on it (``Patch.bites``)."""

    all2all_backend: str
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    expert_parallel: bool = False
    elastic_ep: bool = False
    activation_format: str = "bf16"  # the MoE activations: "bf16" unquantised, "fp8-block", ...


class Patch:
    """Subclass and fill in the class attributes and the three methods (and ``bites``)."""

    name: str = ""
    summary: str = ""
    upstream: str = ""  # upstream PR
    affected: str = ""  # releases found affected (see docs/patches.md)
    requires: tuple[str, ...] = ("vllm",)  # without these the patched code cannot run
    # "module:Qualified.name" of the patched functions/methods: the plugin decides the
    # patch at the first call of any of them (lazy.py), not when vLLM loads it.
    triggers: tuple[str, ...] = ()
    # The fix as the change it stands for in vLLM's sources (patches.source.SourceEdit),
    # which ``patches export`` writes into a tree that needs it; () : no such change.
    source_edits: tuple = ()
    # When the patch can go: the first release that carries the fix, as probed.
    removable: str = ""

    def probe(self) -> tuple[bool, str]:
        """(bug present?, what was observed).  May raise UnrecognisedShape."""
        raise NotImplementedError

    def bites(self, serving: Serving) -> str:
        """How serving ``serving`` fails where the bug is present ("": it does not reach
        the bug, or the bug costs no failure).  ``preflight`` asks it."""
        return ""

    def apply(self) -> None:
        raise NotImplementedError

    def revert(self) -> None:
        raise NotImplementedError

    def status(self, value: str, reason: str) -> PatchStatus:
        return PatchStatus(self.name, value, reason, self.upstream, self.affected)

    def run(self, enabled: bool, probe_disabled: bool = True) -> PatchStatus:
        """Probe, apply when needed and enabled, verify.  Never raises for the bug itself.

        ``probe_disabled=False``: a disabled patch is not even probed (the plugin in
        every vLLM process: disabling must cost nothing); doctor probes it to say
        whether the bug is there.
        """
        if not enabled and not probe_disabled:
            return self.status(DISABLED, "disabled by configuration (not probed)")
        missing = missing_package(*self.requires)
        if missing:
            return self.status(NOT_NEEDED, f"{missing} not installed: the patched code cannot run")
        try:
            with quiet_vllm_logs():
                present, observed = self.probe()
        except UnrecognisedShape as exc:
            logger.warning(
                "vllm-ep-kit patch %s: not applied, unrecognised vLLM code: %s", self.name, exc
            )
            return self.status(REFUSED, f"unrecognised vLLM code: {exc}")
        if not present:
            return self.status(NOT_NEEDED, observed)
        if not enabled:
            return self.status(NEEDED, f"{observed}; disabled by configuration")
        self.apply()
        try:
            with quiet_vllm_logs():
                still, after = self.probe()
        except UnrecognisedShape as exc:
            still, after = True, f"probe failed after patching: {exc}"
        if still:
            self.revert()
            logger.warning(
                "vllm-ep-kit patch %s: fix did not verify (%s); reverted", self.name, after
            )
            return self.status(REFUSED, f"fix did not verify: {after}")
        logger.info("vllm-ep-kit patch %s applied (%s): %s", self.name, self.upstream, self.summary)
        return self.status(APPLIED, f"{observed}; after patch: {after}")


@contextlib.contextmanager
def quiet_vllm_logs():
    """vLLM's own INFO lines from code a probe exercises ("FlashInfer All2All initialized
    for rank 0, size 2" on a CPU machine) are not what the user's server is doing."""
    vllm_logger = logging.getLogger("vllm")
    previous = vllm_logger.level
    vllm_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        vllm_logger.setLevel(previous)


@contextlib.contextmanager
def swapped(owner, **names):
    """Temporarily replace attributes of a module or class (restored on exit)."""
    missing = object()
    saved = {name: getattr(owner, name, missing) for name in names}
    for name, value in names.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


ORIGINAL_ATTR = "__vllm_ep_kit_original__"
UNDERLYING_ATTR = "__vllm_ep_kit_underlying__"  # on a first-use trigger (lazy.py): what it calls


def missing_package(*names: str) -> str | None:
    """The first of ``names`` that is not installed, else None."""
    import importlib.util

    return next((n for n in names if importlib.util.find_spec(n) is None), None)


def wrap(owner, attr: str, make_wrapper, marker: str) -> None:
    """Replace ``owner.attr`` by ``make_wrapper(original)``, once (idempotent).

    A first-use trigger in the way is replaced too: the fix wraps what it calls.
    """
    original = getattr(owner, attr)
    original = getattr(original, UNDERLYING_ATTR, original)
    if getattr(original, marker, None) is True:
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, marker, True)
    setattr(wrapper, ORIGINAL_ATTR, original)
    setattr(owner, attr, wrapper)


def unwrap(owner, attr: str, marker: str) -> None:
    """Undo :func:`wrap` (no-op if ``owner.attr`` is not our wrapper)."""
    current = getattr(owner, attr, None)
    if getattr(current, marker, None) is True:
        setattr(owner, attr, getattr(current, ORIGINAL_ATTR))
