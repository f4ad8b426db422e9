"""uncovered: a step runs a test or script in the tree that none of its
``source_file_dependencies`` entries covers (a change to it does not re-run the step); the
uncovered paths of a step that share a folder are one finding."""

from __future__ import annotations

STEP = """\
group: g
steps:
  - label: unit
    commands:
      - echo start
      - {command}
    source_file_dependencies: {deps}
"""


def _step(ci, command: str, deps: str = "[tests/other.py]"):
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    ci.write("tests/unit/test_b.py", "def test_b():\n    pass\n")
    ci.write("scripts/run.sh", "echo run\n")
    ci.area(STEP.format(command=command, deps=deps))
    return ci.findings("uncovered")


def test_a_test_no_entry_covers_is_found_at_its_command(ci):
    (finding,) = _step(ci, "pytest -v tests/unit/test_a.py")
    assert finding.rule == "uncovered"
    assert finding.path == ".buildkite/test_areas/area.yaml"
    assert finding.line == ci.line_of("pytest -v")
    assert finding.message == (
        "step 'unit' runs tests/unit/test_a.py, which no entry of its source_file_dependencies "
        "covers (a change to it does not re-run the step)"
    )
    assert finding.hint == "add `tests/unit/test_a.py` (or its folder) to source_file_dependencies"


def test_a_script_no_entry_covers_is_found(ci):
    (finding,) = _step(ci, "bash scripts/run.sh")
    assert finding.message.startswith("step 'unit' runs scripts/run.sh, which no entry ")
    assert finding.hint == "add `scripts/run.sh` (or its folder) to source_file_dependencies"


def test_a_test_folder_counts_as_itself(ci):
    (finding,) = _step(ci, "pytest -v tests/unit", deps="[tests/unit/test_a.py]")
    assert finding.message.startswith("step 'unit' runs tests/unit, which no entry ")
    assert _step(ci, "pytest -v tests/unit", deps="[tests/unit]") == []


def test_a_test_whose_entry_lost_its_suffix_is_left_to_stale_dependency(ci):
    assert _step(ci, "pytest -v tests/unit/test_a.py", deps="[tests/unit/test_a]") == []


def test_a_test_its_own_entry_lists_is_clean(ci):
    assert _step(ci, "pytest -v tests/unit/test_a.py", deps="[tests/unit/test_a.py]") == []


def test_a_test_inside_a_listed_folder_is_clean(ci):
    assert _step(ci, "pytest -v tests/unit/test_a.py", deps="[tests/]") == []


def test_a_test_its_folder_lists_but_an_exclusion_removes_is_found(ci):
    (finding,) = _step(ci, "pytest -v tests/unit/test_a.py", deps="[tests/, '!tests/unit/']")
    assert finding.message.startswith("step 'unit' runs tests/unit/test_a.py, which ")


def test_the_uncovered_files_of_one_folder_are_one_finding(ci):
    (finding,) = _step(ci, "pytest -v tests/unit/test_a.py tests/unit/test_b.py")
    assert finding.message == (
        "step 'unit' runs 2 paths under tests/unit/ that no entry of its "
        "source_file_dependencies covers: tests/unit/test_a.py, tests/unit/test_b.py (a change "
        "to them does not re-run the step)"
    )
    assert finding.hint == "add `tests/unit/` (or each path) to source_file_dependencies"
    assert finding.line == ci.line_of("pytest -v")
    assert finding.also == ()


def test_a_group_is_found_at_its_first_line_and_lists_the_others(ci):
    ci.write("tests/unit/test_a.py")
    ci.write("tests/unit/test_b.py")
    ci.write("tests/unit/deep/test_c.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            commands:
              - pytest -v tests/unit/deep/test_c.py
              - pytest -v tests/unit/test_b.py
              - pytest -v tests/unit/test_a.py
            source_file_dependencies: [tests/other.py]
        """
    )
    (finding,) = ci.findings("uncovered")
    assert finding.message.startswith(
        "step 'unit' runs 3 paths under tests/unit/ that no entry of its "
        "source_file_dependencies covers: tests/unit/deep/test_c.py, tests/unit/test_b.py, "
        "tests/unit/test_a.py ("
    )
    assert finding.line == ci.line_of("test_c.py")
    area = ".buildkite/test_areas/area.yaml"
    assert finding.also == (
        f"{area}:{ci.line_of('test_b.py')}",
        f"{area}:{ci.line_of('test_a.py')}",
    )


def test_a_long_group_names_its_first_paths_and_counts_the_rest(ci):
    names = [f"tests/many/test_{n}.py" for n in range(6)]
    for name in names:
        ci.write(name)
    (finding,) = _step(ci, "pytest -v " + " ".join(names))
    assert ", ".join(names[:4]) + " and 2 more (a change" in finding.message
    assert names[4] not in finding.message


def test_a_group_of_four_names_them_all(ci):
    names = [f"tests/many/test_{n}.py" for n in range(4)]
    for name in names:
        ci.write(name)
    (finding,) = _step(ci, "pytest -v " + " ".join(names))
    assert ", ".join(names) + " (a change" in finding.message


def test_uncovered_files_of_two_folders_are_two_findings(ci):
    ci.write("tests/other/test_c.py")
    found = _step(ci, "pytest -v tests/unit/test_a.py tests/other/test_c.py", deps="[tests/x.py]")
    assert [f.hint for f in found] == [
        "add `tests/unit/test_a.py` (or its folder) to source_file_dependencies",
        "add `tests/other/test_c.py` (or its folder) to source_file_dependencies",
    ]


def test_a_folder_pytest_is_handed_is_checked_where_it_exists(ci):
    ci.write("tests/reasoning/test_r.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace/tests
            commands: [pytest -v -s reasoning lora -p no:cacheprovider, pytest -v gone]
            source_file_dependencies: [tests/other.py]
        """
    )
    ci.write("tests/lora/test_l.py")
    # two folders of tests/: two entries to add, two findings
    assert [f.hint for f in ci.findings("uncovered")] == [
        "add `tests/reasoning` (or its folder) to source_file_dependencies",
        "add `tests/lora` (or its folder) to source_file_dependencies",
    ]


def test_a_path_in_a_folded_command_is_found_at_its_own_line(ci):
    ci.write("tests/unit/test_a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            commands:
              - >-
                bash run.sh
                'cd tests &&
                pytest -v unit/test_a.py'
            source_file_dependencies: [tests/other.py]
        """
    )
    (finding,) = ci.findings("uncovered")
    assert finding.line == ci.line_of("pytest -v unit/test_a.py")


def test_only_the_uncovered_file_of_a_command_is_found(ci):
    found = _step(
        ci, "pytest -v tests/unit/test_a.py tests/unit/test_b.py", deps="[tests/unit/test_b.py]"
    )
    assert [f.message.split(",")[0] for f in found] == ["step 'unit' runs tests/unit/test_a.py"]


def test_a_file_missing_from_the_tree_is_left_to_the_paths_exist_rule(ci):
    assert _step(ci, "pytest -v tests/unit/test_gone.py") == []


def test_a_file_outside_the_workspace_is_not_checked(ci):
    assert _step(ci, "pytest -v /opt/tests/test_a.py") == []


def test_a_step_without_dependencies_is_clean_as_it_runs_on_every_change(ci):
    assert _step(ci, "pytest -v tests/unit/test_a.py", deps="[]") == []


def test_an_optional_step_is_checked_and_its_finding_says_when_it_counts(ci):
    ci.write("tests/unit/test_a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: nightly
            optional: true
            commands: [pytest -v tests/unit/test_a.py]
            source_file_dependencies: [tests/other.py]
        """
    )
    (finding,) = ci.findings("uncovered")
    assert finding.message.endswith(
        "(a change to it does not re-run the step) (an optional step: this counts once it is not)"
    )


def test_a_file_whose_change_runs_every_step_is_clean(ci):
    ci.write(".buildkite/ci_config.yaml", "run_all_patterns: ['tests/unit/']\n")
    assert _step(ci, "pytest -v tests/unit/test_a.py") == []


def test_a_file_the_run_all_patterns_do_not_match_is_found(ci):
    ci.write(".buildkite/ci_config.yaml", "run_all_patterns: ['scripts/']\n")
    (finding,) = _step(ci, "pytest -v tests/unit/test_a.py")
    assert finding.message.startswith("step 'unit' runs tests/unit/test_a.py, which ")


def test_a_file_the_run_all_patterns_exclude_is_found(ci):
    ci.write(
        ".buildkite/ci_config.yaml",
        "run_all_patterns: ['tests/']\nrun_all_exclude_patterns: ['tests/unit/']\n",
    )
    (finding,) = _step(ci, "pytest -v tests/unit/test_a.py")
    assert finding.message.startswith("step 'unit' runs tests/unit/test_a.py, which ")


def test_a_file_named_from_the_working_dir_is_checked_as_a_repository_path(ci):
    ci.write("tests/unit/test_a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace/tests
            commands: [pytest -v unit/test_a.py]
            source_file_dependencies: [tests/other.py]
        """
    )
    (finding,) = ci.findings("uncovered")
    assert finding.message.startswith("step 'unit' runs tests/unit/test_a.py, which ")


def test_each_step_is_found_with_its_own_label_and_command(ci):
    ci.write("tests/a.py")
    ci.write("tests/b.py")
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [python tests/a.py]
            source_file_dependencies: [tests/b.py]
          - label: second
            commands:
              - python tests/a.py
              - python tests/b.py
            source_file_dependencies: [tests/a.py]
        """
    )
    found = [(f.line, f.message.split(",")[0]) for f in ci.findings("uncovered")]
    assert found == [
        (ci.line_of("[python tests/a.py]"), "step 'first' runs tests/a.py"),
        (ci.line_of("- python tests/b.py"), "step 'second' runs tests/b.py"),
    ]


def test_a_file_after_a_listed_one_in_the_same_command_is_still_checked(ci):
    found = _step(
        ci, "pytest -v tests/unit/test_a.py tests/unit/test_b.py", deps="[tests/unit/test_a.py]"
    )
    assert [f.message.split(",")[0] for f in found] == ["step 'unit' runs tests/unit/test_b.py"]


def test_a_file_after_one_outside_the_tree_is_still_checked(ci):
    found = _step(ci, "pytest -v /opt/test_x.py tests/unit/test_gone.py tests/unit/test_b.py")
    assert [f.message.split(",")[0] for f in found] == ["step 'unit' runs tests/unit/test_b.py"]


def test_steps_after_an_unlisted_step_are_still_checked(ci):
    ci.write("tests/a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: nightly
            optional: true
            commands: [python tests/a.py]
            source_file_dependencies: [tests/b.py]
          - label: always
            commands: [python tests/a.py]
          - label: listed
            commands: [python tests/a.py]
            source_file_dependencies: [tests/b.py]
        """
    )
    # one cause (tests/a.py uncovered): the listed step's place joins the first finding
    (finding,) = ci.findings("uncovered")
    assert finding.message.startswith("step 'nightly' runs tests/a.py")
    area = ci.root / ".buildkite/test_areas/area.yaml"
    lines = [n for n, t in enumerate(area.read_text().splitlines(), 1) if "tests/a.py]" in t]
    assert finding.also == (f".buildkite/test_areas/area.yaml:{lines[-1]}",)


def test_a_folder_named_as_dot_is_the_whole_tree_and_not_judged(ci):
    ci.write("tests/unit/test_a.py")
    ci.area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace
            commands: [pytest -v .]
            source_file_dependencies: [tests/other.py]
        """
    )
    assert ci.findings("uncovered") == []


def test_a_file_after_one_whose_change_runs_every_step_is_still_checked(ci):
    ci.write(".buildkite/ci_config.yaml", "run_all_patterns: ['scripts/']\n")
    found = _step(ci, "bash scripts/run.sh tests/unit/test_a.py")
    assert [f.message.split(",")[0] for f in found] == ["step 'unit' runs tests/unit/test_a.py"]
