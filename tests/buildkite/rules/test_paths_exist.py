"""path-exists: a test file or script a step runs that is not in the repository, looked up
from the folder the step's shell names it in (working_dir, then any ``cd``)."""

from __future__ import annotations

import pytest

RULE = "path-exists"

STEP = """\
group: g
steps:
  - label: unit
    commands:
      - echo start
      - {command}
"""


def test_a_test_file_that_does_not_exist_is_found_at_its_command(ci):
    ci.area(STEP.format(command="pytest -v tests/test_gone.py"))
    (finding,) = ci.findings(RULE)
    assert finding.rule == RULE
    assert finding.path == ".buildkite/test_areas/area.yaml"
    assert finding.line == ci.line_of("pytest -v tests/test_gone.py")
    assert finding.message == "step 'unit' runs tests/test_gone.py, which does not exist"
    assert finding.hint == "fix the path or add the file"


def test_a_script_that_does_not_exist_is_found(ci):
    ci.area(STEP.format(command="bash scripts/run_all.sh"))
    (finding,) = ci.findings(RULE)
    assert finding.message == "step 'unit' runs scripts/run_all.sh, which does not exist"


def test_a_test_file_that_exists_is_clean(ci):
    ci.write("tests/test_here.py").area(STEP.format(command="pytest -v tests/test_here.py"))
    assert ci.findings(RULE) == []


def test_a_folder_that_exists_is_clean(ci):
    ci.write("tests/unit/test_here.py").area(STEP.format(command="pytest -v tests/unit"))
    assert ci.findings(RULE) == []


def test_each_missing_file_of_one_command_is_found(ci):
    ci.write("tests/test_here.py").area(
        STEP.format(command="pytest tests/test_gone.py tests/test_here.py tests/test_lost.py")
    )
    assert ci.messages(RULE) == [
        "step 'unit' runs tests/test_gone.py, which does not exist",
        "step 'unit' runs tests/test_lost.py, which does not exist",
    ]


def test_a_file_is_looked_up_from_the_working_dir_and_the_message_says_so(ci):
    ci.write("tests/other.py").area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace/tests
            commands:
              - echo start
              - pytest -v test_gone.py
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("pytest -v test_gone.py")
    assert finding.message == (
        "step 'unit' runs test_gone.py (tests/test_gone.py from /vllm-workspace/tests), "
        "which does not exist"
    )


def test_a_path_that_exists_from_another_folder_blames_the_working_dir(ci):
    ci.write("tests/evals/test_gpqa.py").area(
        """\
        group: g
        steps:
          - label: eval
            working_dir: /vllm-workspace/
            commands:
              - echo start
              - pytest -v evals/test_gpqa.py
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("working_dir:")
    assert finding.message == (
        "step 'eval' runs evals/test_gpqa.py from working_dir /vllm-workspace/, where it does "
        "not exist; tests/evals/test_gpqa.py does"
    )
    assert finding.hint == (
        "set working_dir to /vllm-workspace/tests, or write the path from /vllm-workspace/"
    )


def test_a_path_named_after_a_cd_does_not_blame_the_working_dir(ci):
    ci.write("tests/evals/test_gpqa.py").area(
        """\
        group: g
        steps:
          - label: eval
            working_dir: /vllm-workspace/tests
            commands:
              - cd /vllm-workspace && pytest -v evals/test_gpqa.py
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("cd /vllm-workspace")
    assert finding.message == "step 'eval' runs evals/test_gpqa.py, which does not exist"


def test_a_default_working_dir_is_not_blamed(ci):
    ci.write("tests/evals/test_gpqa.py").area(
        """\
        group: g
        steps:
          - label: eval
            commands: [pytest -v evals/test_gpqa.py]
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.message == "step 'eval' runs evals/test_gpqa.py, which does not exist"


def test_a_missing_file_in_a_folded_command_is_found_at_its_own_line(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: xpu
            commands:
              - >-
                bash run.sh
                'cd tests &&
                pytest -v a/test_here.py &&
                pytest -v a/test_gone.py'
        """
    )
    ci.write("tests/a/test_here.py").write("run.sh")
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("pytest -v a/test_gone.py")


def test_a_file_that_exists_under_the_working_dir_is_clean(ci):
    ci.write("tests/test_here.py").area(
        """\
        group: g
        steps:
          - label: unit
            working_dir: /vllm-workspace/tests
            commands: [pytest -v test_here.py]
        """
    )
    assert ci.findings(RULE) == []


def test_a_file_is_looked_up_from_the_folder_a_cd_moved_to(ci):
    ci.write("tests/test_here.py").area(
        STEP.format(command="cd tests && pytest -v test_here.py test_gone.py")
    )
    (finding,) = ci.findings(RULE)
    # only the resolved path is stated here: the message names the working_dir, not the cd
    assert finding.message.startswith("step 'unit' runs test_gone.py (tests/test_gone.py from ")


@pytest.mark.parametrize(
    "command",
    [
        "bash /opt/tools/run.sh",  # an absolute path outside the checkout: the image's own
        "cd /tmp && pytest -v tests/test_gone.py",  # named from outside the checkout
    ],
)
def test_a_file_outside_the_checkout_is_not_judged(ci, command):
    ci.area(STEP.format(command=command))
    assert ci.findings(RULE) == []


@pytest.mark.parametrize(
    "word", ["tests/test_$NAME.py", "tests/test_*.py", "tests/test_{a,b}.py", "tests/test_?.py"]
)
def test_a_path_holding_a_variable_or_a_glob_is_left_to_the_shell(ci, word):
    ci.area(STEP.format(command=f"pytest -v '{word}'"))
    assert ci.findings(RULE) == []


def test_a_missing_file_after_a_glob_in_the_same_command_is_still_found(ci):
    ci.area(STEP.format(command="pytest -v 'tests/test_*.py' tests/test_gone.py"))
    assert ci.messages(RULE) == ["step 'unit' runs tests/test_gone.py, which does not exist"]


def test_a_missing_file_after_one_outside_the_checkout_is_still_found(ci):
    ci.area(STEP.format(command="python /opt/tools/runner.py tests/test_gone.py"))
    assert ci.messages(RULE) == ["step 'unit' runs tests/test_gone.py, which does not exist"]


def test_a_working_dir_that_serves_the_steps_other_paths_is_not_blamed(ci):
    ci.write("examples/features/tensorize.py").write("examples/basic/run.py").area(
        """\
        group: g
        steps:
          - label: examples
            working_dir: /vllm-workspace/examples
            commands:
              - python3 basic/run.py
              - python3 examples/features/tensorize.py
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("python3 examples/features")
    assert finding.message == (
        "step 'examples' runs examples/features/tensorize.py (examples/examples/features/"
        "tensorize.py from /vllm-workspace/examples), which does not exist"
    )


def test_a_path_that_exists_from_the_root_names_the_root_as_working_dir(ci):
    ci.write("scripts/run.sh").area(
        """\
        group: g
        steps:
          - label: tools
            working_dir: /vllm-workspace/tests
            commands: [bash scripts/run.sh, bash scripts/gone.sh]
        """
    )
    found = ci.findings(RULE)
    assert [f.hint for f in found] == [
        "set working_dir to /vllm-workspace, or write the path from /vllm-workspace/tests",
        "fix the path or add the file",  # a path that exists nowhere: the path is wrong
    ]
    assert found[0].line == ci.line_of("working_dir:")


def test_each_path_blaming_the_working_dir_is_its_own_finding(ci):
    ci.write("tests/evals/test_a.py").write("tests/evals/test_b.py").area(
        """\
        group: g
        steps:
          - label: eval
            working_dir: /vllm-workspace/
            commands: [pytest -v evals/test_a.py evals/test_b.py]
        """
    )
    assert [f.message.split(" from ")[0] for f in ci.findings(RULE)] == [
        "step 'eval' runs evals/test_a.py",
        "step 'eval' runs evals/test_b.py",
    ]
