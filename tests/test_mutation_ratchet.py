"""The mutation ratchet's verdicts: which modules it re-runs (those whose text moved since
the kept report, or new in scope), and what fails it (a score that fell, a new module
under the floor)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import mutation_ratchet  # noqa: E402 (a script, imported from its folder)
import mutation_report  # noqa: E402 (a script, imported from its folder)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Two modules in scope (and an __init__ that is not), and a kept report of one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "kept.py").write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "pkg" / "new.py").write_text("def g(x):\n    return x * 2\n")
    (tmp_path / "pyproject.toml").write_text('[tool.mutmut]\nonly_mutate = ["pkg/*.py"]\n')
    kept = {
        "summary": {},
        "modules": {
            "pkg/kept.py": {"sha256": mutation_report.source_hash("pkg/kept.py"), "score": 0.9}
        },
    }
    report = tmp_path / "report.json"
    report.write_text(json.dumps(kept))
    return tmp_path, kept, report


def test_scope_is_the_globbed_modules_without_package_inits(project):
    assert mutation_ratchet.in_scope() == ["pkg/kept.py", "pkg/new.py"]


def test_a_module_is_rerun_when_its_text_moved_or_the_report_lacks_it(project):
    root, kept, _ = project
    assert mutation_ratchet.changed(["pkg/kept.py", "pkg/new.py"], kept) == ["pkg/new.py"]
    (root / "pkg" / "kept.py").write_text("def f(x):\n    return x - 1\n")
    assert mutation_ratchet.changed(["pkg/kept.py"], kept) == ["pkg/kept.py"]


def test_mutant_patterns_name_every_mutant_of_a_module():
    assert mutation_ratchet.mutant_patterns(["vllm_ep_kit/reference/moe.py"]) == [
        "vllm_ep_kit.reference.moe.*"
    ]


@pytest.mark.parametrize(
    ("kept_score", "new_score", "problems"),
    [
        (0.9, 0.95, []),
        (0.9, mutation_ratchet.NEW_MODULE_FLOOR, []),
        (0.95, 0.95, ["pkg/kept.py: mutation score 90.0% fell below 95.0%"]),
        (
            0.9,
            0.94,
            ["pkg/new.py: new in scope with mutation score 94.0%, under 95%"],
        ),
    ],
)
def test_a_fallen_score_or_a_new_module_under_the_floor_fails(kept_score, new_score, problems):
    kept = {"modules": {"pkg/kept.py": {"score": kept_score}}}
    report = {"modules": {"pkg/kept.py": {"score": 0.9}, "pkg/new.py": {"score": new_score}}}
    got = mutation_ratchet.verdicts(report, kept, ["pkg/kept.py", "pkg/new.py"])
    assert got == problems


def test_nothing_changed_runs_nothing_and_passes(project, capsys):
    root, _, report = project
    (root / "pkg" / "new.py").unlink()
    assert mutation_ratchet.main(["--report", str(report)]) == 0
    assert "no module in scope changed" in capsys.readouterr().out


def test_a_dry_run_names_the_changed_modules(project, capsys):
    _, _, report = project
    assert mutation_ratchet.main(["--report", str(report), "--dry-run"]) == 0
    assert "1 module(s) changed: pkg/new.py" in capsys.readouterr().out


def test_no_kept_report_is_exit_2(project, capsys):
    assert mutation_ratchet.main(["--report", "missing.json"]) == 2
    assert "no kept report at missing.json" in capsys.readouterr().err
