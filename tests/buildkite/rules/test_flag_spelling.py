"""flag-spelling: a variable set to a boolean in two spellings (``1`` in one step, ``true``
in another), found at each setting that differs from the most used spelling."""

from __future__ import annotations

import json

import pytest

RULE = "flag-spelling"
AREA = ".buildkite/test_areas/area.yaml"


def steps(*commands: str) -> str:
    """An area with one step per command."""
    return "steps:\n" + "".join(
        f"  - label: step {i}\n    commands:\n      - {json.dumps(c)}\n"
        for i, c in enumerate(commands)
    )


def test_a_minority_spelling_is_found_at_its_command_naming_the_usual_one(ci):
    ci.area(steps("FLAG=1 pytest tests/a.py", "FLAG=true pytest tests/b.py", "FLAG=1 pytest c.py"))
    (finding,) = ci.findings(RULE)
    assert finding.path == AREA
    assert finding.line == ci.line_of("FLAG=true")
    assert finding.rule == RULE
    assert finding.message == "FLAG=true while other steps spell it 1/0"
    assert finding.hint == "write FLAG as 1 / 0"


@pytest.mark.parametrize(
    ("usual", "style", "other"),
    [
        ("1", "1/0", "true"),
        ("0", "1/0", "true"),
        ("true", "true/false", "1"),
        ("false", "true/false", "1"),
        ("True", "True/False", "1"),
        ("False", "True/False", "1"),
        ("yes", "yes/no", "1"),
        ("no", "yes/no", "1"),
        ("on", "on/off", "1"),
        ("off", "on/off", "1"),
    ],
)
def test_each_boolean_spelling_is_recognised_and_named_when_usual(ci, usual, style, other):
    ci.area(steps(f"FLAG={usual} bash a.sh", f"FLAG={other} bash b.sh", f"FLAG={usual} bash c.sh"))
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of(f"FLAG={other} bash b.sh")
    assert finding.message == f"FLAG={other} while other steps spell it {style}"
    first, second = style.split("/")
    assert finding.hint == f"write FLAG as {first} / {second}"


@pytest.mark.parametrize(
    ("one", "other"),
    [("1", "0"), ("true", "false"), ("True", "False"), ("yes", "no"), ("on", "off")],
)
def test_the_two_values_of_one_spelling_agree(ci, one, other):
    ci.area(steps(f"FLAG={one} bash a.sh", f"FLAG={other} bash b.sh"))
    assert ci.findings(RULE) == []


@pytest.mark.parametrize("value", ["2", "enabled", "TRUE", "", "y"])
def test_a_value_that_is_no_boolean_spelling_is_not_counted(ci, value):
    ci.area(steps("FLAG=1 bash a.sh", f"FLAG={value} bash b.sh"))
    assert ci.findings(RULE) == []


def test_different_variables_are_spelled_independently(ci):
    ci.area(steps("FLAG=1 bash a.sh", "OTHER=true bash b.sh"))
    assert ci.findings(RULE) == []


def test_a_variable_spelled_one_way_does_not_hide_a_later_ones_mix(ci):
    ci.area(steps("OTHER=yes bash a.sh", "FLAG=1 bash b.sh", "FLAG=true c.sh", "FLAG=1 d.sh"))
    (finding,) = ci.findings(RULE)
    assert finding.message == "FLAG=true while other steps spell it 1/0"


@pytest.mark.parametrize("order", [("1", "true"), ("true", "1")])
def test_a_tie_goes_to_1_and_0_whichever_comes_first(ci, order):
    ci.area(steps(*(f"FLAG={value} bash {i}.sh" for i, value in enumerate(order))))
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("FLAG=true")
    assert finding.message == "FLAG=true while other steps spell it 1/0"


def test_the_most_used_spelling_wins_over_1_and_0(ci):
    ci.area(steps("FLAG=1 bash a.sh", "FLAG=yes bash b.sh", "FLAG=no bash c.sh"))
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("FLAG=1")
    assert finding.message == "FLAG=1 while other steps spell it yes/no"
    assert finding.hint == "write FLAG as yes / no"


def test_every_minority_setting_is_found(ci):
    ci.area(steps("FLAG=1 bash a.sh", "FLAG=1 bash b.sh", "FLAG=on bash c.sh", "FLAG=True d.sh"))
    assert [(f.line, f.message) for f in ci.findings(RULE)] == [
        (ci.line_of("FLAG=on"), "FLAG=on while other steps spell it 1/0"),
        (ci.line_of("FLAG=True"), "FLAG=True while other steps spell it 1/0"),
    ]


def test_a_setting_in_a_later_command_is_found_at_that_command(ci):
    ci.area(
        """\
        steps:
          - label: one
            commands:
              - FLAG=1 bash a.sh
          - label: two
            commands:
              - echo start
              - FLAG=yes bash b.sh
          - label: three
            commands:
              - FLAG=0 bash c.sh
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("FLAG=yes")
    assert finding.message == "FLAG=yes while other steps spell it 1/0"


def test_an_exported_setting_counts(ci):
    ci.area(steps("FLAG=1 bash a.sh", "export FLAG=off", "FLAG=0 bash c.sh"))
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("export FLAG=off")
    assert finding.message == "FLAG=off while other steps spell it 1/0"


def test_a_step_env_setting_is_found_at_its_value(ci):
    ci.area(
        """\
        steps:
          - label: one
            env:
              OTHER: x
              FLAG: "true"
            commands: [bash a.sh]
          - label: two
            commands: [FLAG=1 bash b.sh]
          - label: three
            commands: [FLAG=0 bash c.sh]
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.path == AREA
    assert finding.line == ci.line_of('FLAG: "true"')
    assert finding.message == "FLAG=true while other steps spell it 1/0"
    assert finding.hint == "write FLAG as 1 / 0"


@pytest.mark.parametrize(
    ("env_value", "read", "other", "usual"),
    [
        ("true", "true", "1", "1/0"),  # a YAML boolean reads as true/false
        ("false", "false", "1", "1/0"),
        ("yes", "true", "1", "1/0"),  # YAML 1.1: yes is a boolean too
        ('"True"', "True", "1", "1/0"),  # a string keeps its case
        ("1", "1", "true", "true/false"),  # a YAML integer
    ],
)
def test_a_step_env_value_is_read_as_yaml_gives_it(ci, env_value, read, other, usual):
    ci.area(
        f"""\
        steps:
          - label: one
            env:
              FLAG: {env_value}
            commands: [bash a.sh]
          - label: two
            commands: [FLAG={other} bash b.sh]
          - label: three
            commands: [FLAG={other} bash c.sh]
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of(f"FLAG: {env_value}")
    assert finding.message == f"FLAG={read} while other steps spell it {usual}"


def test_a_step_env_value_that_is_no_boolean_spelling_is_not_counted(ci):
    ci.area(
        """\
        steps:
          - label: one
            env:
              FLAG: 2
            commands: [FLAG=true bash a.sh]
          - label: two
            commands: [FLAG=1 bash b.sh]
          - label: three
            commands: [FLAG=1 bash c.sh]
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("FLAG=true")


def test_a_mirror_block_is_not_counted_again_nor_for_its_own_env(ci):
    ci.area(
        """\
        steps:
          - label: one
            commands: [FLAG=true bash a.sh]
            mirror:
              amd:
                device: mi325_1
                env:
                  FLAG: "True"
          - label: two
            commands: [FLAG=1 bash b.sh]
        """
    )
    (finding,) = ci.findings(RULE)
    assert finding.line == ci.line_of("FLAG=true")
    assert finding.message == "FLAG=true while other steps spell it 1/0"
