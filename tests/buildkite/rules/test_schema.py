"""schema: every test-area file matches the JSON schema of vLLM's test-area format; each
error is found at the line of the value that breaks it, named by its path in the file."""

from __future__ import annotations

AREA = ".buildkite/test_areas/area.yaml"
HINT = "see vllm_ep_kit/lint/schema.json"


def test_a_file_that_matches_the_schema_is_clean(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
        """
    )
    assert ci.findings("schema") == []


def test_a_value_of_the_wrong_type_is_found_at_its_line_named_by_its_path(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            num_devices: two
        """
    )
    (finding,) = ci.findings("schema")
    assert (finding.rule, finding.path) == ("schema", AREA)
    assert finding.line == ci.line_of("num_devices: two")
    assert finding.message == "steps/0/num_devices: 'two' is not of type 'integer'"
    assert finding.hint == HINT


def test_a_step_missing_a_required_field_is_found_at_the_step(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
          - label: second
        """
    )
    (finding,) = ci.findings("schema")
    assert finding.line == ci.line_of("label: second")
    assert finding.message == "steps/1: 'commands' is a required property"
    assert finding.hint == HINT


def test_an_error_of_the_whole_file_is_named_top_level_at_its_first_line(ci):
    ci.area(
        """\
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
        """
    )
    (finding,) = ci.findings("schema")
    assert (finding.path, finding.line) == (AREA, 1)
    assert finding.message == "(top level): 'group' is a required property"
    assert finding.hint == HINT


def test_every_error_of_every_file_is_found_those_of_one_line_in_path_order(ci):
    # the schema checks label before commands; the findings of one line come by path
    ci.area(
        """\
        group: g
        extra: 1
        steps:
          - {label: 1, commands: 2}
        """,
        name="a.yaml",
    )
    ci.area(
        """\
        group: ""
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
        """,
        name="b.yaml",
    )
    a, b = ".buildkite/test_areas/a.yaml", ".buildkite/test_areas/b.yaml"
    assert [(f.path, f.line, f.message) for f in ci.findings("schema")] == [
        (a, 1, "(top level): Additional properties are not allowed ('extra' was unexpected)"),
        (a, 4, "steps/0/commands: 2 is not of type 'array'"),
        (a, 4, "steps/0/label: 1 is not of type 'string'"),
        (b, 1, "group: '' should be non-empty"),
    ]


def test_errors_under_keys_of_mixed_types_are_each_found(ci):
    """``1:`` (an int) and ``FOO:`` under one mapping (before: a TypeError sorting them)."""
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            env:
              1: [x]
              FOO: [y]
        """
    )
    assert sorted(f.line for f in ci.findings("schema")) == [
        ci.line_of("1: [x]"),
        ci.line_of("FOO: [y]"),
    ]
