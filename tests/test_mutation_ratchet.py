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


TWO_FUNCTIONS = """LIMIT = 3


def f(x):
    return x + 1  # a comment


def g(x):
    return x * LIMIT
"""


@pytest.fixture
def kept_per_function(tmp_path, monkeypatch):
    """A module of two functions and its kept entry, per function, as the report writes it
    (f: 3 of its mutants killed, g: all of them)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "two.py"
    module.write_text(TWO_FUNCTIONS)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mutmut]\nsource_paths = ["pkg/"]\nonly_mutate = ["pkg/*.py"]\n'
    )
    _, names = mutation_report.function_index("pkg/two.py")
    assert sorted(names) == ["x_f", "x_g"]
    entry = kept_entry("pkg/two.py", {"x_f": 3, "x_g": len(names["x_g"])})
    return module, entry, names


def kept_entry(module: str, killed: dict[str, int]) -> dict:
    """The report's entry for ``module`` as it is now, with ``killed`` kills per function."""
    hashes, names = mutation_report.function_index(module)
    return {
        "sha256": mutation_report.source_hash(module),
        "outside_sha256": mutation_report.outside_hash(module),
        "functions": {
            f: {"sha256": hashes[f], "mutants": len(names[f]), "killed": killed[f]} for f in names
        },
    }


METHOD = """class K:
    SIZE = 2

    def m(self, x):
        return x + self.SIZE
"""


@pytest.mark.parametrize(
    ("edit", "rerun"),
    [
        (lambda s: s.replace("x + self", "x - self"), ["xǁKǁm"]),
        (lambda s: s.replace("2", "3"), None),
    ],
    ids=["method-body", "class-attribute"],
)
def test_a_method_reruns_alone_unless_its_class_moved_outside_its_methods(
    kept_per_function, edit, rerun
):
    module = Path("pkg/k.py")
    module.write_text(METHOD)
    entry = kept_entry("pkg/k.py", {"xǁKǁm": 1})
    module.write_text(edit(METHOD))
    assert mutation_ratchet.functions_to_rerun("pkg/k.py", entry) == rerun


@pytest.mark.parametrize(
    ("edit", "rerun"),
    [
        (lambda s: s, []),
        (lambda s: s.replace("x + 1", "x + 2"), ["x_f"]),
        (lambda s: s.replace("# a comment", "# another"), []),
        (lambda s: s + "\n\ndef h(x):\n    return x - 1\n", ["x_h"]),
        (lambda s: s.replace("LIMIT = 3", "LIMIT = 4"), None),
        (lambda s: "import os\n" + s, None),
        (lambda s: s.replace("LIMIT = 3", "LIMIT = 3  # same value"), []),
    ],
    ids=["same", "body", "comment-in-body", "new-function", "constant", "import", "comment-out"],
)
def test_only_functions_whose_text_moved_rerun_unless_the_module_moved_outside_them(
    kept_per_function, edit, rerun
):
    module, entry, _ = kept_per_function
    module.write_text(edit(TWO_FUNCTIONS))
    assert mutation_ratchet.functions_to_rerun("pkg/two.py", entry) == rerun


def test_a_module_kept_without_per_function_results_reruns_whole(kept_per_function):
    _, entry, _ = kept_per_function
    assert mutation_ratchet.functions_to_rerun("pkg/two.py", None) is None
    del entry["functions"]
    assert mutation_ratchet.functions_to_rerun("pkg/two.py", entry) is None


def test_patterns_name_the_mutants_of_the_functions_to_rerun():
    assert mutation_ratchet.patterns_for("pkg/two.py", ["x_f", "xǁKǁm"]) == [
        "pkg.two.x_f__mutmut_*",
        "pkg.two.xǁKǁm__mutmut_*",
    ]
    assert mutation_ratchet.patterns_for("pkg/two.py", None) == ["pkg.two.*"]


@pytest.mark.parametrize(("f_killed_now", "score_f_part"), [(0, 0), (2, 2)])
def test_a_partial_rerun_scores_rerun_functions_now_and_the_others_as_kept(
    kept_per_function, f_killed_now, score_f_part
):
    """f re-run (its result now counts, not its kept 3), g as kept (every mutant killed)."""
    _, entry, names = kept_per_function
    total = len(names["x_f"]) + len(names["x_g"])
    now = {  # this run's report: g's mutants not run, so none killed now
        "mutants": total,
        "functions": {
            "x_f": {"mutants": len(names["x_f"]), "killed": f_killed_now},
            "x_g": {"mutants": len(names["x_g"]), "killed": 0},
        },
    }
    expected = round((score_f_part + len(names["x_g"])) / total, 4)
    assert mutation_ratchet.combined_score(["x_f"], entry, now) == expected


def test_a_dry_run_names_the_functions_it_would_rerun(kept_per_function, tmp_path, capsys):
    module, entry, _ = kept_per_function
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"summary": {}, "modules": {"pkg/two.py": entry}}))
    module.write_text(TWO_FUNCTIONS.replace("x * LIMIT", "x * LIMIT * 1"))
    assert mutation_ratchet.main(["--report", str(report), "--dry-run"]) == 0
    assert "pkg/two.py: re-running functions x_g" in capsys.readouterr().out
