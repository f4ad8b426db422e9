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
    ci.write("tests/extra/test_class.py", "class TestA:\n    attempts = 3\n")
    assert orphans(ci) == []


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


def test_a_lone_orphan_gets_the_hint_for_one_file(ci):
    (finding,) = tree(ci, "pytest -v tests/unit").findings(RULE)
    assert finding.hint == "run it in the step that runs its neighbours, or delete it"


def test_an_orphaned_folder_does_not_stop_the_orphans_after_it(ci):
    tree(ci, "pytest -v tests/other", "tests/zz/test_z.py")
    ci.write("tests/zz/helper.py")
    assert orphans(ci) == ["tests/unit/test_a.py", "tests/zz/test_z.py"]


def test_hidden_and_dunder_folders_are_not_walked(ci):
    command = "pytest -v tests/unit tests/other"
    assert orphans(tree(ci, command, "tests/.cache/test_h.py", "tests/__snap__/test_s.py")) == []


def test_a_file_outside_the_checkout_runs_nothing_of_the_tree(ci):
    assert orphans(tree(ci, "python /opt/tool.py tests/unit")) == ["tests/other/test_c.py"]


def test_a_glob_runs_only_what_it_matches(ci):
    assert orphans(tree(ci, "pytest -v 'tests/unit/test_*.py'")) == ["tests/other/test_c.py"]


def test_a_python_script_a_step_runs_runs_what_it_names(ci):
    tree(ci, "pytest -v tests/unit && python examples/runner.py")
    ci.write("examples/runner.py", "subprocess.run(['pytest', 'tests/other/test_c.py'])\n")
    assert orphans(ci) == []


def test_a_test_file_naming_another_does_not_run_it(ci):
    tree(ci, "pytest -v tests/unit/test_a.py tests/unit/test_b.py")
    ci.write("tests/unit/test_a.py", "def test_a():\n    assert 'tests/other/test_c.py'\n")
    assert orphans(ci) == ["tests/other/test_c.py"]


@pytest.mark.parametrize("name", ["other-pipeline.yml", "scripts/nightly.sh"])
def test_other_ci_files_of_every_kind_run_what_they_name(ci, name):
    tree(ci, "pytest -v tests/unit")
    ci.write(f".buildkite/{name}", "pytest tests/other/test_c.py\n")
    assert orphans(ci) == []


def test_a_file_that_is_no_ci_file_runs_nothing(ci):
    tree(ci, "pytest -v tests/unit")
    ci.write(".buildkite/notes.txt", "pytest tests/other/test_c.py\n")
    assert orphans(ci) == ["tests/other/test_c.py"]


def test_a_script_naming_a_test_from_its_own_folder_runs_it(ci):
    tree(ci, "pytest -v tests/unit && bash tests/other/run.sh")
    ci.write("tests/other/run.sh", 'cd "$(dirname "$0")" && pytest test_c.py\n')
    assert orphans(ci) == []


def test_a_script_calling_a_sibling_by_its_folder_and_itself_ends(ci):
    tree(ci, "pytest -v tests/unit && bash tests/other/sweep.sh")
    ci.write("tests/other/sweep.sh", 'bash "$(dirname "$0")/run.sh"\nbash tests/other/sweep.sh\n')
    ci.write("tests/other/run.sh", "pytest tests/other/test_c.py\n")
    assert orphans(ci) == []


def test_undecodable_bytes_in_scripts_and_tests_are_read_past(ci):
    tree(ci, "pytest -v tests/unit && bash tests/other/run.sh")
    (ci.root / "tests/other/run.sh").write_bytes(b"# caf\xe9\npytest tests/other/test_c.py\n")
    (ci.root / "tests/extra/test_e.py").parent.mkdir()
    (ci.root / "tests/extra/test_e.py").write_bytes(b"# caf\xe9\ndef test_e():\n    pass\n")
    assert orphans(ci) == ["tests/extra/test_e.py"]


def test_a_test_after_imports_and_an_async_test_are_collected(ci):
    tree(ci, "pytest -v tests/unit tests/other")
    ci.write("tests/extra/test_late.py", "import os\n\n\ndef test_late():\n    pass\n")
    ci.write("tests/more/test_async.py", "async def test_async():\n    pass\n")
    assert orphans(ci) == ["tests/extra/test_late.py", "tests/more/test_async.py"]


def test_a_script_naming_a_test_from_the_tests_folder_runs_it(ci):
    tree(ci, "pytest -v tests/unit && bash tests/run.sh", "tests/Xdir/test_x.py")
    ci.write("tests/run.sh", "pytest other/test_c.py Xdir/test_x.py\n")
    assert orphans(ci) == []
