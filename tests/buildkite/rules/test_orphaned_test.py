"""orphaned-test: a test file under ``tests/`` that no step runs (by name, through a folder
less its ``--ignore``s, through a glob, or through a script a step runs)."""

from __future__ import annotations

import pytest

RULE = "orphaned-test"

STEP = """\
group: g
steps:
  - label: unit
    commands:
      - {command}
"""


def tree(ci, command: str, *extra: str):
    """tests/unit/test_a.py and test_b.py, tests/other/test_c.py, and ``extra`` files; one
    step running ``command``."""
    for path in ("tests/unit/test_a.py", "tests/unit/test_b.py", "tests/other/test_c.py", *extra):
        ci.write(path, "def test_x():\n    pass\n")
    return ci.area(STEP.format(command=command))


def orphans(ci) -> list[str]:
    return [f.path for f in ci.findings(RULE)]


def test_a_test_no_step_runs_is_found_at_its_first_line(ci):
    (finding,) = tree(ci, "pytest -v tests/unit/test_a.py tests/unit/test_b.py").findings(RULE)
    assert (finding.path, finding.line) == ("tests/other/test_c.py", 1)
    assert finding.message == "no step runs this test file (a change to it is checked by nothing)"


def test_a_folder_runs_the_tests_of_its_subfolders(ci):
    command = "pytest -v tests/unit tests/other/test_c.py"
    assert orphans(tree(ci, command, "tests/unit/sub/test_d.py")) == []


def test_a_folder_whose_every_test_is_orphaned_is_one_finding_with_the_count(ci):
    (finding,) = tree(ci, "pytest -v tests/other").findings(RULE)
    assert finding.path == "tests/unit/test_a.py"
    assert finding.message == (
        "no step runs any of the 2 test files of tests/unit/ (a change to them is checked by "
        "nothing)"
    )
    assert finding.hint == "run `pytest tests/unit/` in the step that covers its code"


@pytest.mark.parametrize(
    "command",
    [
        "pytest -v tests",
        "pytest -v tests/",
        "pytest -v tests/unit tests/other",
        "pytest -v 'tests/*/test_*.py'",
        "pytest -v tests/unit/test_a.py::test_x tests/unit/test_b.py tests/other/test_c.py",
        "python -m pytest tests/unit/ tests/other/",
    ],
)
def test_every_test_run_by_name_folder_or_glob_is_clean(ci, command):
    assert orphans(tree(ci, command)) == []


@pytest.mark.parametrize(
    "command",
    [
        "pytest -v tests --ignore=tests/other",
        "pytest -v tests --ignore-glob='tests/other/*.py'",
    ],
)
def test_what_ignore_leaves_out_of_a_folder_is_found(ci, command):
    assert orphans(tree(ci, command)) == ["tests/other/test_c.py"]


@pytest.mark.parametrize(
    "command",
    [
        "pytest -v tests --ignore=tests/other/test_c.py",
        "pytest -v tests --ignore tests/other/test_c.py",
        "pytest -v tests --deselect tests/other/test_c.py",
    ],
)
def test_a_file_a_command_leaves_out_by_name_is_left_out_on_purpose(ci, command):
    assert orphans(tree(ci, command)) == []


def test_a_test_file_pytest_collects_nothing_from_is_not_judged(ci):
    tree(ci, "pytest -v tests/unit tests/other")
    ci.write("tests/extra/test_script.py", "if __name__ == '__main__':\n    print('a program')\n")
    assert orphans(ci) == []
    ci.write("tests/extra/test_class.py", "class TestA:\n    def test_a(self):\n        pass\n")
    assert orphans(ci) == ["tests/extra/test_class.py"]


def test_a_test_run_by_a_script_that_a_script_of_a_step_calls_is_clean(ci):
    tree(ci, "pytest -v tests/unit && bash tests/other/sweep.sh")
    ci.write("tests/other/sweep.sh", 'SCRIPT="${GIT_ROOT}/tests/other/run.sh"\nbash "$SCRIPT"\n')
    ci.write("tests/other/run.sh", "pytest tests/other/test_c.py\n")
    assert orphans(ci) == []


def test_a_deselected_test_id_leaves_the_rest_of_its_file_run(ci):
    assert orphans(tree(ci, "pytest -v tests --deselect tests/other/test_c.py::test_x")) == []


def test_an_ignore_in_one_command_leaves_another_commands_folder_whole(ci):
    command = "pytest -v tests/unit --ignore=tests/other\n      - pytest -v tests/other"
    assert orphans(tree(ci, command)) == []


def test_tests_are_found_from_the_working_dir_and_after_a_cd(ci):
    assert orphans(tree(ci, "cd tests && pytest -v unit other")) == []
    assert orphans(tree(ci, "cd tests && pytest -v unit")) == ["tests/other/test_c.py"]


def test_a_test_a_script_of_a_step_runs_is_clean(ci):
    tree(ci, "pytest -v tests/unit && bash tests/other/run.sh")
    ci.write("tests/other/run.sh", 'python -m pytest "${GIT_ROOT}/tests/other/test_c.py"\n')
    assert orphans(ci) == []


def test_a_test_only_a_script_no_step_runs_names_is_found(ci):
    tree(ci, "pytest -v tests/unit")
    ci.write("tests/other/run.sh", "pytest tests/other/test_c.py\n")
    assert orphans(ci) == ["tests/other/test_c.py"]


def test_a_test_another_pipelines_file_runs_is_clean(ci):
    tree(ci, "pytest -v tests/unit")
    ci.write(".buildkite/other-pipeline.yaml", "steps:\n- command: pytest other/test_c.py\n")
    assert orphans(ci) == []


@pytest.mark.parametrize(
    "name", ["conftest.py", "__init__.py", "utils.py", "data/test_input.json", "helpers_test.txt"]
)
def test_files_that_are_not_tests_are_not_judged(ci, name):
    assert orphans(tree(ci, "pytest -v tests/unit tests/other", f"tests/extra/{name}")) == []


def test_pytests_other_file_pattern_is_a_test(ci):
    assert orphans(tree(ci, "pytest -v tests/unit tests/other", "tests/extra/engine_test.py")) == [
        "tests/extra/engine_test.py"
    ]


def test_a_tree_whose_steps_run_no_test_is_not_judged(ci):
    assert orphans(tree(ci, "bash scripts/build.sh")) == []


def test_a_tree_without_a_tests_folder_is_clean(ci):
    ci.write("src/test_a.py").area(STEP.format(command="pytest -v src/test_a.py"))
    assert orphans(ci) == []
