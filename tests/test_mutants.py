"""Every mutant of scripts/mutants.py still matches the code it plants a bug in.

The mutant run itself is ``make mutants`` (minutes); this keeps it from rotting: code
that moves without its mutant fails here, in every test run.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
        module, "MUTANTS", [module.Mutant("m", "code.py", "x = 2", "x = 3", ("tests",), "why")]
    )
    monkeypatch.setattr(sys, "argv", ["mutants.py", "--check"])
    assert module.main() == 1
