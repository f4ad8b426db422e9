"""listed-not-run: a step that is not optional lists a test file in its
``source_file_dependencies`` but no command of it runs the file, and no step that runs on its
own (one that is not optional) does either."""

from __future__ import annotations

import pytest

RULE = "listed-not-run"

LISTER = """\
group: g
steps:
  - label: lister
    source_file_dependencies:
      - vllm/
      - {entry}
    commands:
      - echo start
      - {command}
"""


def lister(ci, command: str = "pytest -v tests/test_other.py", entry: str = "tests/test_a.py"):
    return ci.write("tests/test_a.py").area(LISTER.format(entry=entry, command=command))


def test_a_listed_test_no_step_runs_is_found_at_its_entry(ci):
    (finding,) = lister(ci).findings(RULE)
    assert finding.rule == RULE
    assert finding.path == ".buildkite/test_areas/area.yaml"
    assert finding.line == ci.line_of("- tests/test_a.py")
    assert finding.message == (
        "step 'lister' lists tests/test_a.py but does not run it; no step runs it"
    )
    assert finding.hint == (
        "run it in this step (e.g. `pytest -v tests/test_a.py`), or make a runner non-optional"
    )


@pytest.mark.parametrize(
    "command",
    [
        "pytest -v tests/test_a.py",
        "pytest -v tests/test_a.py::test_one",
        "pytest -v tests",  # the folder holding it
        "pytest -v tests/",
        "pytest -v 'tests/test_*.py'",  # a glob matching it
        "python /opt/tools/runner.py tests/test_a.py",  # after a file outside the checkout
        "pytest -v tests/test_other.py tests/test_a.py",
    ],
)
def test_a_listed_test_the_step_runs_is_clean(ci, command):
    assert lister(ci, command).findings(RULE) == []


def test_a_listed_test_run_through_a_folder_named_from_the_working_dir_is_clean(ci):
    ci.write("tests/unit/test_a.py").area(
        """\
        group: g
        steps:
          - label: lister
            working_dir: /vllm-workspace/tests
            source_file_dependencies: [tests/unit/test_a.py]
            commands: [pytest -v unit]
        """
    )
    assert ci.findings(RULE) == []


def test_a_folder_run_in_a_later_command_runs_the_test(ci):
    ci.write("tests/unit/test_a.py").area(
        """\
        group: g
        steps:
          - label: lister
            source_file_dependencies: [tests/unit/test_a.py]
            commands:
              - pytest -v tests/test_other.py
              - cd tests && pytest -v unit
        """
    )
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(
    "command",
    [
        "pytest -v tests/test_a",  # a name that only begins the file's
        "pytest -v tests/te",  # a folder name that only begins the file's folder
        "pytest -v 'tests/test_b*.py'",  # a glob not matching it
        "pytest -v tests/test_a.py.bak",
    ],
)
def test_a_command_naming_something_else_does_not_run_the_test(ci, command):
    assert len(lister(ci, command).findings(RULE)) == 1


def test_only_optional_runners_are_named(ci):
    ci.write("tests/test_a.py").area(
        LISTER.format(entry="tests/test_a.py", command="pytest -v tests/test_other.py")
        + """\
  - label: four gpus
    optional: true
    commands: [pytest -v tests/test_a.py]
  - label: bystander
    commands: [pytest -v tests/test_other.py]
  - label: eight gpus
    optional: true
    commands: [pytest -v tests]
"""
    )
    (finding,) = ci.findings(RULE)
    assert finding.message == (
        "step 'lister' lists tests/test_a.py but does not run it; "
        "only optional steps run it ('four gpus', 'eight gpus'), which only nightly builds "
        "(NIGHTLY=1), PRs labelled ready-run-all-tests and builds that name its key in "
        "VLLM_CI_ONLY_STEP_KEYS run"
    )


@pytest.mark.parametrize("optional", ["\n    optional: false", ""])
def test_a_test_another_step_runs_on_its_own_is_clean(ci, optional):
    ci.write("tests/test_a.py").area(
        LISTER.format(entry="tests/test_a.py", command="pytest -v tests/test_other.py")
        + f"""\
  - label: four gpus
    optional: true
    commands: [pytest -v tests/test_a.py]
  - label: runner{optional}
    commands: [pytest -v tests/test_a.py]
"""
    )
    assert ci.findings(RULE) == []


def test_an_optional_step_listing_a_test_it_does_not_run_is_clean(ci):
    ci.write("tests/test_a.py").area(
        """\
        group: g
        steps:
          - label: lister
            optional: true
            source_file_dependencies: [tests/test_a.py]
            commands: [pytest -v tests/test_other.py]
        """
    )
    assert ci.findings(RULE) == []


def test_each_unrun_entry_after_entries_that_are_fine_is_found(ci):
    ci.write("tests/test_a.py").write("tests/test_b.py").write("tests/test_c.py").area(
        """\
        group: g
        steps:
          - label: lister
            source_file_dependencies:
              - tests/test_b.py
              - tests/test_c.py
              - tests/test_a.py
            commands: [pytest -v tests/test_b.py]
          - label: runner
            commands: [pytest -v tests/test_c.py]
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("- tests/test_a.py")


@pytest.mark.parametrize(
    ("entry", "file"),
    [
        ("tests/helper.py", "tests/helper.py"),  # not a test file
        ("tests/test_data.json", "tests/test_data.json"),
        ("tests/", "tests/test_a.py"),  # a folder
        ("tests/test_gone.py", "tests/test_a.py"),  # no such file
        ("tests/test_dir.py", "tests/test_dir.py/test_a.py"),  # a folder named like a test
        ('"!tests/test_a.py"', "!tests/test_a.py"),  # an exclusion, even where such a path exists
    ],
)
def test_an_entry_that_is_no_existing_test_file_is_not_judged(ci, entry, file):
    ci.write(file).area(LISTER.format(entry=entry, command="pytest -v tests/test_other.py"))
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(
    ("command", "runs_it"),
    [
        ("pytest -v tests/*.py", True),
        ("pytest -v tests/test_?.py", True),
        ("pytest -v tests/test_[ab].py", True),
        ("pytest -v tests/*", True),  # a folder level: everything below it
        ("pytest -v */test_a.py", True),
        ("pytest -v te*", True),  # a glob naming a folder that holds it
        ("pytest -v tests/test_[bc].py", False),
        ("pytest -v tests/test_??.py", False),
        ("pytest -v *.py", False),  # the shell's * stays within one folder level
        ("pytest -v tests/*/test_a.py", False),
        ("pytest -v tests/test_a.py/*", False),  # below the file: nothing
        ("pytest -v tests/test_b.py", False),  # no glob, another file
    ],
)
def test_a_glob_runs_what_the_shell_expands_it_to(ci, command, runs_it):
    assert (lister(ci, command).findings(RULE) == []) is runs_it
