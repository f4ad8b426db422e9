"""The mutation report's verdicts: the score over every mutant, marks with their reasons, and
the ratchet that fails where a module's score fell."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import mutation_report  # noqa: E402 (a script, imported from its folder)

SOURCE = """def f(x):
    return x + 1


def g(x):
    return x * 2  # pragma: no mutate (equivalent: doubling is the identity on the zeros (and only those) used)


def h(x):
    return x - 1  # pragma: no mutate
"""


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A module and mutmut's results for it: exit codes as mutmut records them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(SOURCE)
    meta = tmp_path / "mutants" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {
        "pkg.mod.x_f__mutmut_1": 1,  # a test failed: killed
        "pkg.mod.x_f__mutmut_2": 36,  # timed out: noticed, counted killed
        "pkg.mod.x_f__mutmut_3": 0,  # every test passed: survived
        "pkg.mod.x_f__mutmut_4": 33,  # no test reached it
        "pkg.mod.x_f__mutmut_5": None,  # not run yet
    }
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path


def test_the_score_is_killed_over_every_mutant_one_not_run_counting_as_not_killed(results):
    report, _ = mutation_report.build_report()
    module = report["modules"]["pkg/mod.py"]
    assert (module["mutants"], module["not_checked"]) == (5, 1)
    assert (module["killed"], module["timeout"], module["survived"], module["no_tests"]) == (
        2,
        1,
        1,
        1,
    )
    assert module["score"] == 0.4
    assert [s["name"] for s in module["survivors"]] == [
        "pkg.mod.x_f__mutmut_3",
        "pkg.mod.x_f__mutmut_4",
    ]
    assert report["summary"] == {
        "mutants": 5,
        "not_checked": 1,
        "killed": 2,
        "score": 0.4,
        "equivalent_lines": 1,
    }


def test_a_no_mutate_mark_counts_apart_with_its_reason_and_is_refused_without(results):
    report, problems = mutation_report.build_report()
    assert report["modules"]["pkg/mod.py"]["equivalent_lines"] == [
        {"line": 6, "why": "doubling is the identity on the zeros (and only those) used"}
    ]
    assert len(problems) == 1 and problems[0].startswith("pkg/mod.py:10: ")
    assert mutation_report.main([]) == 1


@pytest.mark.parametrize(
    ("kept", "problem"),
    [
        (0.4, None),
        (0.3, None),
        (0.5, "pkg/mod.py: mutation score 40.0% fell below 50.0%"),
    ],
)
def test_the_ratchet_fails_where_a_score_fell(results, kept, problem):
    report, _ = mutation_report.build_report()
    baseline = {"modules": {"pkg/mod.py": {"score": kept}}}
    assert mutation_report.fell(report, baseline) == ([problem] if problem else [])


def test_the_ratchet_fails_where_a_kept_module_is_gone(results):
    report, _ = mutation_report.build_report()
    baseline = {"modules": {"pkg/other.py": {"score": 0.9}}}
    assert mutation_report.fell(report, baseline) == [
        "pkg/other.py: in the baseline, not in this run"
    ]


def test_no_results_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert mutation_report.main([]) == 2
    assert "no mutants/ here" in capsys.readouterr().err
