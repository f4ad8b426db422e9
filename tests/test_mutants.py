"""The hand-planted mutants and the mutation tool's configuration stay in step with the code.

Every mutant of scripts/mutants.py still matches the code it plants a bug in, and says why
the tool does not make it; every path the tool's configuration names exists. The runs
themselves are ``make mutants`` and ``make mutation`` (minutes); this keeps them from
rotting: code that moves without them fails here, in every test run.
"""

import fnmatch
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]


@pytest.fixture(scope="module")
def hand():
    spec = importlib.util.spec_from_file_location("hand_mutants", REPO / "scripts/mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hand_mutants"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["hand_mutants"]


def in_tool_scope(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in TOOL["only_mutate"])


def test_each_mutant_text_occurs_once():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/mutants.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_a_moved_text_is_reported(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutants", REPO / "scripts/mutants.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutants", module)
    spec.loader.exec_module(module)
    (tmp_path / "code.py").write_text("x = 1\n")
    monkeypatch.setattr(module, "REPO", tmp_path)
    monkeypatch.setattr(
        module,
        "MUTANTS",
        [module.Mutant("m", "code.py", "x = 2", "x = 3", ("tests",), "why", ("operand",))],
    )
    monkeypatch.setattr(sys, "argv", ["mutants.py", "--check"])
    assert module.main() == 1


def test_each_hand_mutant_says_why_the_tool_does_not_make_it(hand):
    for m in hand.MUTANTS:
        assert m.by_hand and set(m.by_hand) <= set(hand.BY_HAND), m.name
        shapes = set(m.by_hand) - {"out-of-scope", "rank-process"}
        if in_tool_scope(m.path):
            # the tool makes every mutant of its own shapes there: only other shapes stay
            assert "out-of-scope" not in m.by_hand, m.name
            assert shapes or "rank-process" in m.by_hand, m.name
        else:
            assert "out-of-scope" in m.by_hand or "rank-process" in m.by_hand, m.name


def test_every_path_the_tool_is_configured_with_exists():
    for pattern in TOOL["only_mutate"]:
        assert list(REPO.glob(pattern)), f"only_mutate {pattern} matches nothing"
    for path in TOOL["pytest_add_cli_args_test_selection"] + TOOL["also_copy"]:
        assert (REPO / path).exists(), path


def test_every_test_the_tool_leaves_out_exists():
    """A renamed test would slip back into the mutation run's selection unseen (the
    deselection then matches nothing): each one left out names a test that exists."""
    args = TOOL["pytest_add_cli_args"]
    left_out = [args[i + 1] for i, arg in enumerate(args) if arg == "--deselect"]
    assert left_out
    for node in left_out:
        path, name = node.split("::")
        assert (REPO / path).is_file(), node
        assert f"\ndef {name}(" in (REPO / path).read_text(), node
