"""The patch framework's decisions (patches/base.py, lazy.py, __init__.py), each both ways.

No vLLM here.  Stand-in patches act on small "upstream" classes and modules written by the
tests: a probe that sees a bug or not, a fix that takes or not, an environment that names
patches or not.  For every decision there is the case where it goes one way and the nearest
case where it goes the other.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
import sys
import threading
import types

import pytest

from vllm_ep_kit import patches
from vllm_ep_kit.patches import lazy
from vllm_ep_kit.patches.base import (
    APPLIED,
    DISABLED,
    NEEDED,
    NOT_NEEDED,
    ORIGINAL_ATTR,
    PENDING,
    REFUSED,
    UNDERLYING_ATTR,
    Patch,
    PatchStatus,
    UnrecognisedShape,
    missing_package,
    quiet_vllm_logs,
    swapped,
    unwrap,
    wrap,
)

TRIGGER = "__vllm_ep_kit_trigger__"
MISSING = "vllm_ep_kit_no_such_package"


def is_trigger(value) -> bool:
    return bool(getattr(value, TRIGGER, False))


# ---------------------------------------------------------------------------------------
# Patch.run: probe, apply, verify


class Scripted(Patch):
    """A patch whose probe answers from a script (or raises), recording what happened."""

    name = "scripted"
    summary = "makes the scripted bug go away"
    upstream = "https://example.invalid/pr/1"
    affected = "1.0"
    requires = ()

    def __init__(self, *answers):
        self.answers = list(answers)
        self.events: list[str] = []
        self.probe_log_levels: list[int] = []

    def probe(self):
        self.events.append("probe")
        self.probe_log_levels.append(logging.getLogger("vllm").level)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def apply(self):
        self.events.append("apply")

    def revert(self):
        self.events.append("revert")


BUG = (True, "bug seen")
FIXED = (False, "bug gone")


@pytest.fixture
def vllm_logger_at_debug():
    vllm_logger = logging.getLogger("vllm")
    previous = vllm_logger.level
    vllm_logger.setLevel(logging.DEBUG)
    yield vllm_logger
    vllm_logger.setLevel(previous)


@pytest.fixture
def patch_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vllm_ep_kit.patches")
    return caplog


def messages(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_present_bug_is_fixed_and_the_fix_is_verified(patch_logs):
    patch = Scripted(BUG, FIXED)
    status = patch.run(enabled=True)
    assert status == PatchStatus(
        "scripted", APPLIED, "bug seen; after patch: bug gone", patch.upstream, "1.0"
    )
    assert patch.events == ["probe", "apply", "probe"]
    assert messages(patch_logs, logging.INFO) == [
        "vllm-ep-kit patch scripted applied (https://example.invalid/pr/1): "
        "makes the scripted bug go away"
    ]
    assert not messages(patch_logs, logging.WARNING)


def test_an_absent_bug_is_not_patched(patch_logs):
    patch = Scripted(FIXED)
    status = patch.run(enabled=True)
    assert (status.status, status.reason) == (NOT_NEEDED, "bug gone")
    assert patch.events == ["probe"]
    assert not patch_logs.records


def test_a_present_bug_of_a_disabled_patch_is_reported_needed_and_left_alone():
    patch = Scripted(BUG)
    status = patch.run(enabled=False)
    assert (status.status, status.reason) == (NEEDED, "bug seen; disabled by configuration")
    assert patch.events == ["probe"]


def test_an_absent_bug_of_a_disabled_patch_is_reported_not_needed():
    patch = Scripted(FIXED)
    assert patch.run(enabled=False).status == NOT_NEEDED


def test_a_disabled_patch_is_not_even_probed_when_probing_disabled_ones_is_off():
    patch = Scripted(BUG)
    status = patch.run(enabled=False, probe_disabled=False)
    assert (status.status, status.reason) == (
        DISABLED,
        "disabled by configuration (not probed)",
    )
    assert patch.events == []


def test_an_enabled_patch_is_decided_whether_or_not_disabled_ones_are_probed():
    patch = Scripted(BUG, FIXED)
    assert patch.run(enabled=True, probe_disabled=False).status == APPLIED
    assert patch.events == ["probe", "apply", "probe"]


def test_a_fix_that_does_not_verify_is_reverted_and_refused(patch_logs):
    patch = Scripted(BUG, (True, "bug still seen"))
    status = patch.run(enabled=True)
    assert (status.status, status.reason) == (REFUSED, "fix did not verify: bug still seen")
    assert patch.events == ["probe", "apply", "probe", "revert"]
    assert messages(patch_logs, logging.WARNING) == [
        "vllm-ep-kit patch scripted: fix did not verify (bug still seen); reverted"
    ]
    assert not messages(patch_logs, logging.INFO)


def test_a_probe_that_no_longer_recognises_the_code_after_the_fix_is_reverted_and_refused(
    patch_logs,
):
    patch = Scripted(BUG, UnrecognisedShape("no Manager after patching"))
    status = patch.run(enabled=True)
    assert (status.status, status.reason) == (
        REFUSED,
        "fix did not verify: probe failed after patching: no Manager after patching",
    )
    assert patch.events == ["probe", "apply", "probe", "revert"]
    assert messages(patch_logs, logging.WARNING) == [
        "vllm-ep-kit patch scripted: fix did not verify "
        "(probe failed after patching: no Manager after patching); reverted"
    ]


def test_unrecognised_code_is_refused_without_applying_anything(patch_logs):
    patch = Scripted(UnrecognisedShape("Manager.initialize has no group argument"))
    status = patch.run(enabled=True)
    assert (status.status, status.reason) == (
        REFUSED,
        "unrecognised vLLM code: Manager.initialize has no group argument",
    )
    assert patch.events == ["probe"]
    assert messages(patch_logs, logging.WARNING) == [
        "vllm-ep-kit patch scripted: not applied, unrecognised vLLM code: "
        "Manager.initialize has no group argument"
    ]


def test_unrecognised_code_of_a_disabled_patch_is_refused_too():
    patch = Scripted(UnrecognisedShape("gone"))
    assert patch.run(enabled=False).status == REFUSED


def test_a_probe_that_crashes_otherwise_is_not_taken_for_a_verdict():
    patch = Scripted(KeyError("a bug in the probe"))
    with pytest.raises(KeyError):
        patch.run(enabled=True)
    assert patch.events == ["probe"]


def test_a_patch_whose_package_is_missing_is_not_needed_and_not_probed():
    patch = Scripted(BUG, FIXED)
    patch.requires = ("json", MISSING, MISSING + "_too")
    status = patch.run(enabled=True)
    assert (status.status, status.reason) == (
        NOT_NEEDED,
        f"{MISSING} not installed: the patched code cannot run",
    )
    assert patch.events == []


def test_a_patch_whose_packages_are_installed_is_probed():
    patch = Scripted(BUG, FIXED)
    patch.requires = ("json", "logging")
    assert patch.run(enabled=True).status == APPLIED


def test_both_probes_run_with_vllm_info_logs_silenced_and_the_level_comes_back(
    vllm_logger_at_debug,
):
    patch = Scripted(BUG, FIXED)
    patch.run(enabled=True)
    assert patch.probe_log_levels == [logging.WARNING, logging.WARNING]
    assert vllm_logger_at_debug.level == logging.DEBUG


def test_the_vllm_log_level_comes_back_after_a_probe_that_raises(vllm_logger_at_debug):
    patch = Scripted(UnrecognisedShape("x"))
    patch.run(enabled=True)
    assert patch.probe_log_levels == [logging.WARNING]
    assert vllm_logger_at_debug.level == logging.DEBUG


def test_quiet_vllm_logs_sets_warning_inside_and_restores_on_an_exception(vllm_logger_at_debug):
    with pytest.raises(RuntimeError), quiet_vllm_logs():
        assert vllm_logger_at_debug.level == logging.WARNING
        raise RuntimeError
    assert vllm_logger_at_debug.level == logging.DEBUG


def test_a_status_carries_the_patch_name_upstream_and_affected_releases():
    status = Scripted().status("some status", "some reason")
    assert status.as_dict() == {
        "name": "scripted",
        "status": "some status",
        "reason": "some reason",
        "upstream": "https://example.invalid/pr/1",
        "affected": "1.0",
    }
    copy = status.as_dict()
    copy["status"] = "changed"
    assert status.status == "some status"


def test_the_base_patch_has_no_probe_apply_or_revert_of_its_own():
    patch = Patch()
    for step in (patch.probe, patch.apply, patch.revert):
        with pytest.raises(NotImplementedError):
            step()


# ---------------------------------------------------------------------------------------
# A real fix on a stand-in upstream class: wrap, unwrap, swapped, missing_package


class Upstream:
    """Plays vLLM's code: ``ratio`` crashes on a zero denominator (the bug)."""

    def ratio(self, a, b):
        """Upstream's docstring."""
        return a / b

    def total(self, a, b):
        return a + b


def zero_safe(original):
    def ratio(self, a, b):
        return 0.0 if b == 0 else original(self, a, b)

    return ratio


class ZeroRatio(Patch):
    name = "zero_ratio"
    requires = ()

    def probe(self):
        try:
            Upstream().ratio(1, 0)
        except ZeroDivisionError:
            return True, "ratio(1, 0) raises"
        return False, "ratio(1, 0) is 0"

    def apply(self):
        wrap(Upstream, "ratio", zero_safe, "__zero_ratio__")

    def revert(self):
        unwrap(Upstream, "ratio", "__zero_ratio__")


@pytest.fixture
def upstream():
    saved = dict(vars(Upstream))
    yield Upstream
    for attr in ("ratio", "total"):
        setattr(Upstream, attr, saved[attr])


def test_a_real_fix_is_applied_verified_and_takes_effect(upstream):
    original = upstream.ratio
    status = ZeroRatio().run(enabled=True)
    assert (status.status, status.reason) == (
        APPLIED,
        "ratio(1, 0) raises; after patch: ratio(1, 0) is 0",
    )
    assert upstream().ratio(1, 0) == 0.0 and upstream().ratio(1, 2) == 0.5
    assert getattr(upstream.ratio, ORIGINAL_ATTR) is original
    assert upstream.ratio.__zero_ratio__ is True
    assert ZeroRatio().run(enabled=True).status == NOT_NEEDED  # fixed code needs nothing


def test_wrap_keeps_the_original_name_and_docstring(upstream):
    original = upstream.ratio
    wrap(upstream, "ratio", zero_safe, "__zero_ratio__")
    assert upstream.ratio.__name__ == "ratio"
    assert upstream.ratio.__doc__ == "Upstream's docstring."
    assert upstream.ratio.__wrapped__ is original


def test_wrapping_twice_with_one_marker_wraps_once(upstream):
    calls = []

    def counting(original):
        def ratio(self, a, b):
            calls.append(1)
            return original(self, a, b)

        return ratio

    wrap(upstream, "ratio", counting, "__counting__")
    first = upstream.ratio
    wrap(upstream, "ratio", counting, "__counting__")
    assert upstream.ratio is first
    assert upstream().ratio(4, 2) == 2 and calls == [1]


def test_wrapping_with_another_marker_wraps_again(upstream):
    wrap(upstream, "ratio", zero_safe, "__zero_ratio__")
    first = upstream.ratio
    wrap(upstream, "ratio", zero_safe, "__other__")
    assert upstream.ratio is not first
    assert getattr(upstream.ratio, ORIGINAL_ATTR) is first


def test_wrap_reaches_through_a_first_use_trigger_to_what_it_calls(upstream):
    original = upstream.ratio

    def trigger(self, a, b):
        raise AssertionError("the fix must not call the trigger")

    setattr(trigger, UNDERLYING_ATTR, original)
    upstream.ratio = trigger
    wrap(upstream, "ratio", zero_safe, "__zero_ratio__")
    assert getattr(upstream.ratio, ORIGINAL_ATTR) is original
    assert upstream().ratio(3, 0) == 0.0 and upstream().ratio(3, 1) == 3


def test_wrap_through_a_trigger_over_an_applied_fix_wraps_once(upstream):
    wrap(upstream, "ratio", zero_safe, "__zero_ratio__")
    fixed = upstream.ratio

    def trigger(self, a, b):
        return fixed(self, a, b)

    setattr(trigger, UNDERLYING_ATTR, fixed)
    upstream.ratio = trigger
    wrap(upstream, "ratio", zero_safe, "__zero_ratio__")
    assert upstream.ratio is trigger


def test_unwrap_puts_the_original_back(upstream):
    original = upstream.ratio
    wrap(upstream, "ratio", zero_safe, "__zero_ratio__")
    unwrap(upstream, "ratio", "__zero_ratio__")
    assert upstream.ratio is original


def test_unwrap_leaves_another_wrapper_and_a_plain_method_alone(upstream):
    wrap(upstream, "ratio", zero_safe, "__other__")
    other = upstream.ratio
    unwrap(upstream, "ratio", "__zero_ratio__")
    assert upstream.ratio is other
    total = upstream.total
    unwrap(upstream, "total", "__zero_ratio__")
    assert upstream.total is total


def test_unwrap_of_a_missing_attribute_does_nothing(upstream):
    unwrap(upstream, "no_such_method", "__zero_ratio__")
    assert not hasattr(upstream, "no_such_method")


def test_swapped_replaces_attributes_and_restores_or_removes_them():
    owner = types.SimpleNamespace(kept="old")
    with swapped(owner, kept="new", added="extra"):
        assert (owner.kept, owner.added) == ("new", "extra")
    assert owner.kept == "old" and not hasattr(owner, "added")


def test_swapped_restores_after_an_exception():
    owner = types.SimpleNamespace(kept="old")
    with pytest.raises(RuntimeError), swapped(owner, kept="new", added="extra"):
        raise RuntimeError
    assert vars(owner) == {"kept": "old"}


def test_swapped_restores_an_attribute_that_held_none():
    owner = types.SimpleNamespace(kept=None)
    with swapped(owner, kept="new"):
        pass
    assert vars(owner) == {"kept": None}


def test_missing_package_names_the_first_missing_one_or_none():
    assert missing_package() is None
    assert missing_package("json", "logging") is None
    assert missing_package("json", MISSING + "_a", MISSING + "_b") == MISSING + "_a"


# ---------------------------------------------------------------------------------------
# lazy.Armed: triggers on every named target, decided exactly once

SOURCE = """
LIMIT = 3


class Base:
    def run(self, value):
        return ("base", value)


class Child(Base):
    pass


class Outer:
    class Inner:
        def method(self, value):
            return ("inner", value)


class Manager:
    def initialize(self, value):
        return ("original", value)

    def finalize(self, value):
        return ("original", value)


def dispatch(value):
    return ("original", value)


def combine(value):
    return ("original", value)
"""
_names = itertools.count()


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Fresh, not yet imported module names (wrapt's hooks are keyed by module name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make():
        name = f"framework_target_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(SOURCE)
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.fixture
def module_name(make_module):
    return make_module()


class Decider:
    """What a patch decision does, recorded: counts calls, optionally fixes ``dispatch``."""

    def __init__(self, module_name=None, fix=True):
        self.module_name, self.fix, self.calls = module_name, fix, 0

    def __call__(self):
        self.calls += 1
        if self.fix:
            module = sys.modules[self.module_name]

            def fixed(original):
                return lambda value: ("fixed", original(value)[1])

            wrap(module, "dispatch", fixed, "__fixed__")


def test_split_target_gives_the_module_and_each_part_of_the_qualified_name():
    assert lazy.split_target("a.b:Outer.Inner.method") == ("a.b", ["Outer", "Inner", "method"])
    assert lazy.split_target("a:dispatch") == ("a", ["dispatch"])


def test_the_first_colon_ends_the_module_name():
    assert lazy.split_target("pkg.mod:Cls:attr") == ("pkg.mod", ["Cls:attr"])


def test_a_malformed_target_names_itself_in_the_error():
    with pytest.raises(ValueError) as info:
        lazy.split_target("a.b")
    assert str(info.value) == "trigger 'a.b': expected 'module:Qualified.name'"


def test_every_named_target_gets_a_trigger_and_importing_decides_nothing(module_name):
    decide = Decider(module_name)
    targets = tuple(
        f"{module_name}:{path}"
        for path in ("dispatch", "combine", "Manager.initialize", "Manager.finalize")
    )
    lazy.Armed(targets, decide).arm()
    module = importlib.import_module(module_name)
    for function in (module.dispatch, module.combine):
        assert is_trigger(function)
    for method in ("initialize", "finalize"):
        assert is_trigger(vars(module.Manager)[method])
    assert decide.calls == 0


@pytest.mark.parametrize("used", ["dispatch", "combine", "initialize", "finalize"])
def test_the_first_call_of_any_named_target_decides_and_removes_every_trigger(module_name, used):
    decide = Decider(module_name)
    targets = tuple(
        f"{module_name}:{path}"
        for path in ("dispatch", "combine", "Manager.initialize", "Manager.finalize")
    )
    lazy.Armed(targets, decide).arm()
    module = importlib.import_module(module_name)
    call = getattr(module, used, None) or getattr(module.Manager(), used)
    call(7)
    assert decide.calls == 1
    assert module.dispatch(1) == ("fixed", 1)
    assert module.combine(1) == ("original", 1)
    assert not any(
        is_trigger(f) for f in (module.combine, module.Manager.initialize, module.Manager.finalize)
    )


def test_the_call_that_decides_goes_to_the_fix(module_name):
    decide = Decider(module_name)
    lazy.Armed((f"{module_name}:dispatch",), decide).arm()
    module = importlib.import_module(module_name)
    assert module.dispatch(5) == ("fixed", 5)
    assert decide.calls == 1


def test_the_call_that_decides_goes_to_the_original_when_nothing_was_fixed(module_name):
    decide = Decider(module_name, fix=False)
    lazy.Armed((f"{module_name}:dispatch",), decide).arm()
    module = importlib.import_module(module_name)
    assert module.dispatch(5) == ("original", 5)
    assert not is_trigger(module.dispatch) and decide.calls == 1


def test_targets_in_two_modules_are_armed_as_each_is_imported(make_module):
    first, second = make_module(), make_module()
    decide = Decider(second)
    lazy.Armed((f"{first}:combine", f"{second}:dispatch", f"{first}:dispatch"), decide).arm()
    one = importlib.import_module(first)
    assert is_trigger(one.combine) and is_trigger(one.dispatch)
    two = importlib.import_module(second)
    assert is_trigger(two.dispatch) and decide.calls == 0
    assert two.dispatch(2) == ("fixed", 2)
    assert not is_trigger(one.combine) and not is_trigger(one.dispatch)


def test_a_module_imported_after_the_decision_gets_no_trigger(make_module):
    first, second = make_module(), make_module()
    decide = Decider(first)
    lazy.Armed((f"{first}:dispatch", f"{second}:dispatch"), decide).arm()
    importlib.import_module(first).dispatch(1)
    two = importlib.import_module(second)
    assert not is_trigger(two.dispatch) and decide.calls == 1


@pytest.mark.parametrize("path", ["dispatch", "no_such_function"])
def test_a_module_the_decision_itself_imports_is_not_armed_and_decides_nothing_again(
    make_module, path
):
    first, second = make_module(), make_module()
    seen = []

    def decide():
        seen.append(is_trigger(importlib.import_module(second).dispatch))

    lazy.Armed((f"{first}:dispatch", f"{second}:{path}"), decide).arm()
    importlib.import_module(first).dispatch(1)
    assert seen == [False]


def test_a_disarmed_patch_gets_no_trigger_in_a_module_imported_later(module_name):
    decide = Decider(module_name)
    armed = lazy.Armed((f"{module_name}:dispatch",), decide)
    armed.arm()
    armed.disarm()
    module = importlib.import_module(module_name)
    assert not is_trigger(module.dispatch)
    armed.fire()
    assert decide.calls == 0


def test_a_nested_class_method_is_armed(module_name):
    decide = Decider(module_name, fix=False)
    lazy.Armed((f"{module_name}:Outer.Inner.method",), decide).arm()
    module = importlib.import_module(module_name)
    assert is_trigger(vars(module.Outer.Inner)["method"]) and decide.calls == 0
    assert module.Outer.Inner().method(3) == ("inner", 3) and decide.calls == 1


def test_a_target_that_exists_waits_even_when_another_in_its_module_is_missing(module_name):
    decide = Decider(module_name)
    targets = (f"{module_name}:NoSuchClass.initialize", f"{module_name}:dispatch")
    lazy.Armed(targets, decide).arm()
    module = importlib.import_module(module_name)
    assert is_trigger(module.dispatch) and decide.calls == 0


@pytest.mark.parametrize("path", ["NoSuchClass.initialize", "Manager.no_such", "LIMIT", "Manager"])
def test_a_module_without_any_plain_function_named_decides_at_once(module_name, path):
    decide = Decider(module_name, fix=False)
    lazy.Armed((f"{module_name}:{path}",), decide).arm()
    module = importlib.import_module(module_name)
    assert decide.calls == 1
    assert module.LIMIT == 3 and not is_trigger(module.Manager.initialize)


def test_an_inherited_method_is_armed_on_the_class_named_and_inherited_again(module_name):
    decide = Decider(module_name, fix=False)
    armed = lazy.Armed((f"{module_name}:Child.run",), decide)
    armed.arm()
    module = importlib.import_module(module_name)
    assert is_trigger(vars(module.Child)["run"]) and not is_trigger(vars(module.Base)["run"])
    armed.disarm()
    assert "run" not in vars(module.Child)
    assert module.Child().run(1) == ("base", 1)


def test_disarm_puts_each_own_method_and_function_back(module_name):
    module = importlib.import_module(module_name)
    originals = (module.dispatch, vars(module.Manager)["initialize"])
    armed = lazy.Armed((f"{module_name}:dispatch", f"{module_name}:Manager.initialize"), Decider())
    armed.arm()
    armed.disarm()
    assert (module.dispatch, vars(module.Manager)["initialize"]) == originals


def test_disarm_leaves_what_someone_else_put_there_and_restores_the_rest(module_name):
    module = importlib.import_module(module_name)
    original = module.dispatch
    armed = lazy.Armed((f"{module_name}:dispatch", f"{module_name}:combine"), Decider(fix=False))
    armed.arm()

    def theirs(value):
        return ("theirs", value)

    module.combine = theirs  # the trigger installed last, replaced since
    armed.disarm()
    assert module.combine is theirs and module.dispatch is original


def test_disarm_after_the_attribute_was_deleted_leaves_it_deleted(module_name):
    module = importlib.import_module(module_name)
    armed = lazy.Armed((f"{module_name}:dispatch",), Decider(fix=False))
    armed.arm()
    del module.dispatch
    armed.disarm()
    assert not hasattr(module, "dispatch")


def test_arming_twice_installs_one_trigger_over_the_original(module_name):
    module = importlib.import_module(module_name)
    original = module.dispatch
    armed = lazy.Armed((f"{module_name}:dispatch",), Decider(module_name))
    armed.arm()
    armed.arm()
    assert getattr(module.dispatch, UNDERLYING_ATTR) is original
    assert module.dispatch.__wrapped__ is original
    assert module.dispatch(4) == ("fixed", 4)
    assert getattr(module.dispatch, ORIGINAL_ATTR) is original


def test_a_decision_that_raises_reaches_the_caller_once_and_the_originals_come_back(
    module_name,
):
    calls = []

    def decide():
        calls.append(1)
        raise RuntimeError("probe crashed")

    lazy.Armed((f"{module_name}:dispatch",), decide).arm()
    module = importlib.import_module(module_name)
    with pytest.raises(RuntimeError, match="probe crashed"):
        module.dispatch(1)
    assert not is_trigger(module.dispatch)
    assert module.dispatch(2) == ("original", 2) and calls == [1]


def test_the_deciding_threads_own_calls_reach_the_original_even_after_the_fix(module_name):
    module = importlib.import_module(module_name)
    seen = []

    def decide():
        seen.append(trigger(1))  # a reference taken before the decision
        Decider(module_name)()
        seen.append(trigger(2))

    lazy.Armed((f"{module_name}:dispatch",), decide).arm()
    trigger = module.dispatch
    assert trigger(3) == ("fixed", 3)
    assert seen == [("original", 1), ("original", 2)]
    assert trigger(4) == ("fixed", 4)  # after the decision: through the attribute


def test_another_thread_waits_for_the_verdict_and_then_runs_the_fix(module_name):
    module = importlib.import_module(module_name)
    started, release = threading.Event(), threading.Event()
    results = []

    def decide():
        started.set()
        assert release.wait(10)
        Decider(module_name)()

    lazy.Armed((f"{module_name}:dispatch",), decide).arm()
    trigger = module.dispatch
    decider = threading.Thread(target=lambda: results.append(("decider", trigger(1))))
    decider.start()
    assert started.wait(10)
    waiter = threading.Thread(target=lambda: results.append(("waiter", trigger(2))))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and results == []
    release.set()
    decider.join(10)
    waiter.join(10)
    assert sorted(results) == [("decider", ("fixed", 1)), ("waiter", ("fixed", 2))]


# ---------------------------------------------------------------------------------------
# The registry: configuration from the environment, apply_all, register


class Probed(Patch):
    """A registry entry over a stand-in module's ``dispatch``: bug present until fixed."""

    requires = ()

    def __init__(self, name, module_name=None, bug=True, fix_takes=True, triggers=None):
        self.name, self.module_name = name, module_name
        self.bug, self.fix_takes, self.fixed, self.probes = bug, fix_takes, False, 0
        self.triggers = tuple(triggers if triggers is not None else ())

    def probe(self):
        self.probes += 1
        if self.module_name:
            sys.modules[self.module_name].dispatch(0)  # as a real probe uses the code
        return self.bug and not self.fixed, f"{self.name} probed"

    def apply(self):
        self.fixed = self.fix_takes

    def revert(self):
        self.fixed = False


@pytest.fixture
def registry(monkeypatch):
    """A fresh plugin state whose patches are the ones a test installs."""
    monkeypatch.setattr(patches, "_results", None)
    monkeypatch.setattr(patches, "_results_probed_disabled", True)
    monkeypatch.setattr(patches, "_armed", {})
    monkeypatch.delenv(patches.ENV_DISABLE, raising=False)
    monkeypatch.delenv(patches.ENV_REQUIRE, raising=False)

    def install(*entries):
        monkeypatch.setattr(patches, "all_patches", lambda: list(entries))
        return entries

    return install


def names_and_statuses(results):
    return [(r.name, r.status) for r in results]


def test_all_patches_are_real_patches_with_distinct_names():
    found = patches.all_patches()
    assert found and all(isinstance(p, Patch) for p in found)
    assert len({p.name for p in found}) == len(found)


def test_with_nothing_configured_every_patch_is_decided(registry):
    registry(Probed("a"), Probed("b", bug=False))
    assert names_and_statuses(patches.apply_all()) == [("a", APPLIED), ("b", NOT_NEEDED)]


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_an_empty_variable_names_no_patch(registry, monkeypatch, value):
    registry(Probed("a"), Probed("b"))
    monkeypatch.setenv(patches.ENV_DISABLE, value)
    monkeypatch.setenv(patches.ENV_REQUIRE, value)
    assert names_and_statuses(patches.apply_all()) == [("a", APPLIED), ("b", APPLIED)]


@pytest.mark.parametrize("value", ["b", " b ", "b,", "c, b", "b,c"])
def test_disable_names_exactly_the_patches_listed(registry, monkeypatch, value):
    registry(Probed("a"), Probed("b"), Probed("c"))
    monkeypatch.setenv(patches.ENV_DISABLE, value)
    disabled = {name.strip() for name in value.split(",") if name.strip()}
    results = patches.apply_all()
    assert names_and_statuses(results) == [
        (name, NEEDED if name in disabled else APPLIED) for name in "abc"
    ]


def test_disable_all_disables_every_patch(registry, monkeypatch):
    registry(Probed("a"), Probed("b", bug=False))
    monkeypatch.setenv(patches.ENV_DISABLE, "all")
    assert names_and_statuses(patches.apply_all()) == [("a", NEEDED), ("b", NOT_NEEDED)]


def test_disable_all_among_names_disables_every_patch(registry, monkeypatch):
    registry(Probed("a"), Probed("b"))
    monkeypatch.setenv(patches.ENV_DISABLE, "b, all")
    assert names_and_statuses(patches.apply_all()) == [("a", NEEDED), ("b", NEEDED)]


def test_all_is_not_a_patch_name_to_require(registry, monkeypatch):
    registry(Probed("a"))
    monkeypatch.setenv(patches.ENV_REQUIRE, "all")
    with pytest.raises(patches.PatchConfigError) as info:
        patches.apply_all()
    assert str(info.value) == f"{patches.ENV_REQUIRE}: unknown patch name(s) all; known: a"


@pytest.mark.parametrize("variable", [patches.ENV_DISABLE, patches.ENV_REQUIRE])
def test_unknown_names_are_one_line_errors_naming_the_variable(registry, monkeypatch, variable):
    registry(Probed("b"), Probed("a"))
    monkeypatch.setenv(variable, "zeta, a, alpha")
    with pytest.raises(patches.PatchConfigError) as info:
        patches.apply_all()
    message = str(info.value)
    assert message == f"{variable}: unknown patch name(s) alpha, zeta; known: b, a"
    assert "\n" not in message


def test_a_patch_both_disabled_and_required_is_an_error(registry, monkeypatch):
    registry(Probed("a"), Probed("b"), Probed("c"))
    monkeypatch.setenv(patches.ENV_DISABLE, "c,b")
    monkeypatch.setenv(patches.ENV_REQUIRE, "c,a,b")
    with pytest.raises(patches.PatchConfigError) as info:
        patches.apply_all()
    assert str(info.value) == (f"{patches.ENV_DISABLE} and {patches.ENV_REQUIRE} both name b, c")


def test_disable_all_with_any_required_patch_is_an_error(registry, monkeypatch):
    registry(Probed("a"), Probed("b"))
    monkeypatch.setenv(patches.ENV_DISABLE, "all")
    monkeypatch.setenv(patches.ENV_REQUIRE, "b")
    with pytest.raises(patches.PatchConfigError, match=r"both name b$"):
        patches.apply_all()


def test_disabling_one_patch_and_requiring_another_is_fine(registry, monkeypatch):
    registry(Probed("a"), Probed("b"))
    monkeypatch.setenv(patches.ENV_DISABLE, "a")
    monkeypatch.setenv(patches.ENV_REQUIRE, "b")
    assert names_and_statuses(patches.apply_all()) == [("a", NEEDED), ("b", APPLIED)]


def test_required_patches_that_apply_or_are_not_needed_pass(registry, monkeypatch):
    registry(Probed("a"), Probed("b", bug=False), Probed("c", fix_takes=False))
    monkeypatch.setenv(patches.ENV_REQUIRE, "a,b")
    results = patches.apply_all()
    assert names_and_statuses(results) == [("a", APPLIED), ("b", NOT_NEEDED), ("c", REFUSED)]


def test_required_patches_that_cannot_take_effect_are_each_named(registry, monkeypatch):
    registry(Probed("a", fix_takes=False), Probed("b"), Probed("c", fix_takes=False))
    monkeypatch.setenv(patches.ENV_REQUIRE, "c,b,a")
    with pytest.raises(patches.RequiredPatchError) as info:
        patches.apply_all()
    assert str(info.value) == (
        "required patch a is refused: fix did not verify: a probed; "
        "required patch c is refused: fix did not verify: c probed"
    )


def test_a_required_patch_reported_only_as_needed_fails(registry, monkeypatch):
    """The pure check, on statuses apply_all cannot produce for a required patch."""
    patch = Probed("a")
    for status in (NEEDED, DISABLED, PENDING, REFUSED):
        with pytest.raises(patches.RequiredPatchError, match=f"required patch a is {status}: r"):
            patches._check_required([patch.status(status, "r")], {"a"})
    patches._check_required([patch.status(REFUSED, "r")], {"b"})
    patches._check_required([patch.status(APPLIED, "r"), patch.status(NOT_NEEDED, "r")], {"a"})


def test_disabled_patches_are_probed_for_doctor_and_skipped_otherwise(registry, monkeypatch):
    a, _b = registry(Probed("a"), Probed("b"))
    monkeypatch.setenv(patches.ENV_DISABLE, "a")
    assert names_and_statuses(patches.apply_all(probe_disabled=False)) == [
        ("a", DISABLED),
        ("b", APPLIED),
    ]
    assert a.probes == 0
    assert names_and_statuses(patches.apply_all()) == [("a", NEEDED), ("b", NOT_NEEDED)]
    assert a.probes == 1  # probing was asked for only now: decided again


def test_apply_all_decides_once_per_process(registry):
    (a,) = registry(Probed("a"))
    first = patches.apply_all()
    assert patches.apply_all() is first and a.probes == 2
    assert patches.statuses() is first


def test_apply_all_without_probing_disabled_ones_reuses_any_earlier_verdict(registry):
    (a,) = registry(Probed("a"))
    first = patches.apply_all(probe_disabled=False)
    assert patches.apply_all(probe_disabled=False) is first
    patches.apply_all()
    assert patches.apply_all(probe_disabled=False) is patches.statuses()
    assert a.probes == 3


def test_apply_all_with_force_decides_again(registry):
    (a,) = registry(Probed("a"))
    first = patches.apply_all()
    again = patches.apply_all(force=True)
    assert again is not first and names_and_statuses(again) == [("a", NOT_NEEDED)]
    assert a.probes == 3


def test_apply_all_enforces_required_patches(registry, monkeypatch):
    registry(Probed("a", fix_takes=False))
    monkeypatch.setenv(patches.ENV_REQUIRE, "a")
    with pytest.raises(patches.RequiredPatchError, match=r"^required patch a is refused"):
        patches.apply_all()


def test_statuses_are_none_before_the_plugin_or_apply_all_ran(registry):
    assert patches.statuses() is None


def test_register_arms_enabled_patches_and_decides_none_of_them(registry, module_name):
    a, b = registry(
        Probed("a", module_name, triggers=[f"{module_name}:dispatch"]),
        Probed(
            "b",
            module_name,
            triggers=[f"{module_name}:combine", f"{module_name}:Manager.initialize"],
        ),
    )
    patches.register()
    results = patches.statuses()
    assert [(r.name, r.status, r.reason) for r in results] == [
        ("a", PENDING, f"decided at the first call of {module_name}:dispatch"),
        (
            "b",
            PENDING,
            f"decided at the first call of {module_name}:combine or "
            f"{module_name}:Manager.initialize",
        ),
    ]
    assert set(patches._armed) == {"a", "b"} and a.probes == b.probes == 0


def test_each_armed_patch_is_decided_by_its_own_first_use(registry, module_name):
    a, _b = registry(
        Probed("a", module_name, triggers=[f"{module_name}:dispatch"]),
        Probed("b", triggers=[f"{module_name}:combine"], bug=False),
    )
    patches.register()
    module = importlib.import_module(module_name)
    module.combine(1)
    assert names_and_statuses(patches.statuses()) == [("a", PENDING), ("b", NOT_NEEDED)]
    assert set(patches._armed) == {"a"} and a.probes == 0
    module.dispatch(1)
    assert names_and_statuses(patches.statuses()) == [("a", APPLIED), ("b", NOT_NEEDED)]
    assert patches._armed == {}


def test_register_runs_once_per_process(registry, module_name):
    (_a,) = registry(Probed("a", triggers=[f"{module_name}:dispatch"]))
    patches.register()
    first = patches.statuses()
    patches.register()
    assert patches.statuses() is first and len(patches._armed) == 1


def test_register_decides_a_disabled_patch_as_disabled_without_probing(registry, monkeypatch):
    (a,) = registry(Probed("a", triggers=["somewhere:f"]))
    monkeypatch.setenv(patches.ENV_DISABLE, "a")
    patches.register()
    (status,) = patches.statuses()
    assert (status.status, status.reason) == (DISABLED, "disabled by configuration (not probed)")
    assert a.probes == 0 and patches._armed == {}


def test_apply_all_after_register_probes_the_disabled_patches_it_skipped(registry, monkeypatch):
    (a,) = registry(Probed("a"))
    monkeypatch.setenv(patches.ENV_DISABLE, "a")
    patches.register()
    assert names_and_statuses(patches.apply_all()) == [("a", NEEDED)] and a.probes == 1


def test_apply_all_after_register_reuses_verdicts_when_nothing_waits(registry, monkeypatch):
    a, b = registry(Probed("a"), Probed("b", bug=False))
    patches.register()
    first = patches.statuses()
    assert patches.apply_all(probe_disabled=False) is first
    assert (a.probes, b.probes) == (2, 1)


def test_register_decides_at_once_a_required_patch_or_one_without_triggers(
    registry, monkeypatch, module_name
):
    trigger = [f"{module_name}:dispatch"]
    _required, _plain, missing, armed = registry(
        Probed("required", triggers=trigger),
        Probed("plain"),
        Probed("missing", triggers=trigger),
        Probed("armed", triggers=trigger),
    )
    missing.requires = (MISSING,)
    monkeypatch.setenv(patches.ENV_REQUIRE, "required")
    patches.register()
    assert [(r.name, r.status, r.reason) for r in patches.statuses()] == [
        ("required", APPLIED, "required probed; after patch: required probed"),
        ("plain", APPLIED, "plain probed; after patch: plain probed"),
        ("missing", NOT_NEEDED, f"{MISSING} not installed: the patched code cannot run"),
        ("armed", PENDING, f"decided at the first call of {module_name}:dispatch"),
    ]
    assert list(patches._armed) == ["armed"] and armed.probes == 0


def test_register_enforces_required_patches(registry, monkeypatch):
    registry(Probed("a", fix_takes=False, triggers=["somewhere:f"]))
    monkeypatch.setenv(patches.ENV_REQUIRE, "a")
    with pytest.raises(patches.RequiredPatchError, match=r"^required patch a is refused"):
        patches.register()


def test_register_reads_the_configuration(registry, monkeypatch):
    registry(Probed("a"))
    monkeypatch.setenv(patches.ENV_DISABLE, "b")
    with pytest.raises(patches.PatchConfigError, match=f"^{patches.ENV_DISABLE}: unknown"):
        patches.register()


def test_a_patch_whose_module_is_already_imported_without_its_target_is_decided_by_register(
    registry, module_name
):
    importlib.import_module(module_name)
    (a,) = registry(Probed("a", triggers=[f"{module_name}:no_such_function"], bug=False))
    patches.register()
    assert names_and_statuses(patches.statuses()) == [("a", NOT_NEEDED)]
    assert patches._armed == {} and a.probes == 1


def test_apply_all_disarms_what_register_armed(registry, module_name):
    module = importlib.import_module(module_name)
    original = module.dispatch
    (_a,) = registry(Probed("a", triggers=[f"{module_name}:dispatch", f"{module_name}:combine"]))
    patches.register()
    assert is_trigger(module.dispatch)
    assert names_and_statuses(patches.apply_all()) == [("a", APPLIED)]
    assert module.dispatch is original and not is_trigger(module.combine)
    assert patches._armed == {}


def test_a_crash_while_deciding_at_first_use_is_refused_and_logged(
    registry, module_name, patch_logs
):
    class Crashing(Probed):
        def probe(self):
            raise KeyError("a bug in the probe")

    registry(Crashing("a", triggers=[f"{module_name}:dispatch"]))
    patches.register()
    module = importlib.import_module(module_name)
    assert module.dispatch(3) == ("original", 3)
    (status,) = patches.statuses()
    assert (status.status, status.reason) == (
        REFUSED,
        "deciding at first use failed: KeyError: 'a bug in the probe'",
    )
    assert messages(patch_logs, logging.ERROR) == [
        "vllm-ep-kit patch a: deciding at first use failed"
    ]
    assert patches._armed == {}


def test_a_verdict_at_first_use_replaces_only_its_own_pending_status(registry):
    patch = Probed("a", bug=False)
    patches._decide_at_first_use(0, patch)  # no statuses at all: nothing to replace
    assert patches.statuses() is None
    other = Probed("b").status(PENDING, "waits")
    patches._results = [other]
    patches._decide_at_first_use(0, patch)  # another patch's slot
    patches._decide_at_first_use(1, patch)  # past the end
    assert patches.statuses() == [other]
    patches._results = [other, patch.status(PENDING, "waits")]
    patches._decide_at_first_use(1, patch)
    assert names_and_statuses(patches.statuses()) == [("b", PENDING), ("a", NOT_NEEDED)]


def test_apply_all_decided_armed_patch_does_not_keep_it_armed(registry, module_name):
    armed = functools.partial(Probed, triggers=[f"{module_name}:dispatch"])
    registry(armed("a"), armed("b"))
    patches.register()
    patches.apply_all()
    importlib.import_module(module_name)
    assert not is_trigger(sys.modules[module_name].dispatch)


def test_a_patch_that_says_nothing_of_its_reach_reaches_no_serve_setup():
    """``Patch.bites`` by default: no serve setup is said to fail (preflight reports only
    bugs a patch says it knows the reach of)."""
    from vllm_ep_kit.patches.base import Serving

    setup = Serving("flashinfer_nvlink_one_sided", 2, 4, expert_parallel=True)
    assert Scripted().bites(setup) == ""


@pytest.mark.parametrize(
    ("value", "disabled"), [("", set()), ("b", {"b"}), (" c, b ", {"b", "c"}), ("all", set("abc"))]
)
def test_disabled_names_reads_the_configuration_as_the_plugin_does(
    registry, monkeypatch, value, disabled
):
    registry(Probed("a"), Probed("b"), Probed("c"))
    monkeypatch.setenv(patches.ENV_DISABLE, value)
    assert patches.disabled_names() == disabled


def test_disabled_names_refuses_what_the_plugin_refuses(registry, monkeypatch):
    registry(Probed("a"), Probed("b"))
    monkeypatch.setenv(patches.ENV_DISABLE, "zeta")
    with pytest.raises(patches.PatchConfigError, match="unknown patch name"):
        patches.disabled_names()
    monkeypatch.setenv(patches.ENV_DISABLE, "a")
    monkeypatch.setenv(patches.ENV_REQUIRE, "a")
    with pytest.raises(patches.PatchConfigError, match="both name a"):
        patches.disabled_names()
