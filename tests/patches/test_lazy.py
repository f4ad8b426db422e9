"""The plugin's first-use decision (patches/lazy.py) on a real module imported after arming.

No vLLM here: a small module written to a temporary folder plays the patched code, and a
stand-in patch records its decisions, so each promise can be watched failing.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import sys
import threading
import time

import pytest

from vllm_ep_kit import patches
from vllm_ep_kit.patches import lazy
from vllm_ep_kit.patches.base import Patch, unwrap, wrap

SOURCE = """
class Base:
    def run(self, value, *, scale=1):
        return ("base", value * scale)


class Child(Base):
    pass


class Manager:
    def initialize(self, value, *, scale=1):
        return ("original", value * scale)


def dispatch(value):
    return ("original", value)
"""
_names = itertools.count()


@pytest.fixture
def module_name(tmp_path, monkeypatch):
    """A fresh, not yet imported module (wrapt's hooks are keyed by module name)."""
    name = f"lazy_target_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


class Decider:
    """Stands in for a patch's probe-apply-verify: counts calls, installs a fix."""

    def __init__(self, module_name, fail=False):
        self.module_name, self.fail, self.calls = module_name, fail, 0

    def __call__(self):
        self.calls += 1
        time.sleep(0.2)  # a probe takes a while: other threads arrive meanwhile
        if self.fail:
            raise RuntimeError("probe crashed")
        module = sys.modules[self.module_name]

        def fixed(self_, value, *, scale=1):
            return ("fixed", value * scale)

        module.Manager.initialize = fixed


def test_armed_before_import_decides_once_at_the_first_call(module_name):
    decide = Decider(module_name)
    armed = lazy.Armed((f"{module_name}:Manager.initialize",), decide)
    armed.arm()
    assert decide.calls == 0 and module_name not in sys.modules
    module = importlib.import_module(module_name)
    trigger = module.Manager.initialize
    assert getattr(trigger, "__vllm_ep_kit_trigger__", False)
    assert str(inspect.signature(trigger)) == "(self, value, *, scale=1)"
    assert decide.calls == 0  # importing is not using
    results, start = [], threading.Barrier(8)

    def call():
        start.wait()
        results.append(module.Manager().initialize(2, scale=3))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert decide.calls == 1
    assert results == [("fixed", 6)] * 8  # even the call that decided runs the fix
    assert module.Manager().initialize(1) == ("fixed", 1)
    assert decide.calls == 1


def test_a_module_imported_before_arming_is_armed_at_once(module_name):
    module = importlib.import_module(module_name)
    decide = Decider(module_name)
    lazy.Armed((f"{module_name}:Manager.initialize",), decide).arm()
    assert getattr(module.Manager.initialize, "__vllm_ep_kit_trigger__", False)
    assert module.Manager().initialize(4) == ("fixed", 4) and decide.calls == 1


def test_an_inherited_method_is_inherited_again_after_the_decision(module_name):
    decide = Decider(module_name)
    lazy.Armed((f"{module_name}:Child.run",), decide).arm()
    module = importlib.import_module(module_name)
    assert "run" in module.Child.__dict__  # the trigger sits on the class named
    assert module.Child().run(5) == ("base", 5)
    assert "run" not in module.Child.__dict__ and decide.calls == 1


def test_a_missing_target_is_decided_as_soon_as_the_module_is_imported(module_name):
    decide = Decider(module_name)
    lazy.Armed((f"{module_name}:Manager.no_such_method",), decide).arm()
    importlib.import_module(module_name)
    assert decide.calls == 1  # the probe then reports the unknown code


def test_disarm_puts_the_originals_back_and_never_decides(module_name):
    decide = Decider(module_name)
    armed = lazy.Armed((f"{module_name}:dispatch", f"{module_name}:Manager.initialize"), decide)
    armed.arm()
    module = importlib.import_module(module_name)
    armed.disarm()
    assert not getattr(module.dispatch, "__vllm_ep_kit_trigger__", False)
    assert module.dispatch(1) == ("original", 1)
    assert module.Manager().initialize(1) == ("original", 1) and decide.calls == 0


@pytest.mark.parametrize("target", ["no_colon", ":x", "module:"])
def test_a_malformed_target_is_an_error(target):
    with pytest.raises(ValueError, match=r"expected 'module:Qualified\.name'"):
        lazy.split_target(target)


class FakePatch(Patch):
    """A real Patch subclass over the temporary module (probe, apply, revert)."""

    name = "fake_lazy"
    summary = "stand-in"
    requires = ()

    def __init__(self, module_name, crash=False):
        self.module_name, self.crash, self.probes = module_name, crash, 0
        self.triggers = (f"{module_name}:dispatch",)

    def _module(self):
        return sys.modules[self.module_name]

    def probe(self):
        self.probes += 1
        if self.crash:
            raise KeyError("a bug in the probe")
        kind = self._module().dispatch(0)[0]  # through the attribute, as real probes do
        return kind == "original", f"dispatch gave {kind}"

    def apply(self):
        def fixed(original):
            def dispatch(value):
                return ("fixed", original(value)[1])

            return dispatch

        wrap(self._module(), "dispatch", fixed, "__fake_fix__")

    def revert(self):
        unwrap(self._module(), "dispatch", "__fake_fix__")


@pytest.fixture
def fresh_plugin(monkeypatch):
    monkeypatch.setattr(patches, "_results", None)
    monkeypatch.setattr(patches, "_armed", {})
    monkeypatch.delenv(patches.ENV_DISABLE, raising=False)
    monkeypatch.delenv(patches.ENV_REQUIRE, raising=False)


def test_register_arms_then_the_first_call_replaces_pending(module_name, fresh_plugin, monkeypatch):
    patch = FakePatch(module_name)
    monkeypatch.setattr(patches, "all_patches", lambda: [patch])
    patches.register()
    assert [s.status for s in patches.statuses()] == ["pending"] and patch.probes == 0
    module = importlib.import_module(module_name)
    assert module.dispatch(3) == ("fixed", 3)
    assert [s.status for s in patches.statuses()] == ["applied"] and patch.probes == 2


def test_a_crash_while_deciding_is_refused_and_the_call_goes_on(
    module_name, fresh_plugin, monkeypatch
):
    patch = FakePatch(module_name, crash=True)
    monkeypatch.setattr(patches, "all_patches", lambda: [patch])
    patches.register()
    module = importlib.import_module(module_name)
    assert module.dispatch(3) == ("original", 3)
    (status,) = patches.statuses()
    assert status.status == "refused"
    assert "deciding at first use failed: KeyError" in status.reason


def test_a_required_patch_is_decided_when_the_plugin_loads(module_name, fresh_plugin, monkeypatch):
    importlib.import_module(module_name)
    patch = FakePatch(module_name)
    monkeypatch.setattr(patches, "all_patches", lambda: [patch])
    monkeypatch.setenv(patches.ENV_REQUIRE, "fake_lazy")
    patches.register()
    assert [s.status for s in patches.statuses()] == ["applied"] and patch.probes == 2


def test_apply_all_decides_armed_patches_now(module_name, fresh_plugin, monkeypatch):
    module = importlib.import_module(module_name)
    patch = FakePatch(module_name)
    monkeypatch.setattr(patches, "all_patches", lambda: [patch])
    patches.register()
    assert getattr(module.dispatch, "__vllm_ep_kit_trigger__", False)
    assert [s.status for s in patches.apply_all()] == ["applied"]
    assert module.dispatch(2) == ("fixed", 2)
    assert not patches._armed


class FixThatDoesNotTake(FakePatch):
    """Its apply changes the module, but the bug stays: the probe still sees it."""

    name = "fix_does_not_take"

    def apply(self):
        self._module().applied_once = True

    def revert(self):
        self.reverted = True
        del self._module().applied_once


def test_a_fix_that_does_not_take_is_refused_and_reverted(module_name):
    """A fix whose post-apply probe still finds the bug is refused and reverted, not
    reported applied."""
    importlib.import_module(module_name)
    patch = FixThatDoesNotTake(module_name)
    status = patch.run(enabled=True)
    assert status.status == "refused"
    assert status.reason.startswith("fix did not verify: dispatch gave original")
    assert patch.reverted and not hasattr(sys.modules[module_name], "applied_once")
    assert patch.probes == 2  # probed before and after
