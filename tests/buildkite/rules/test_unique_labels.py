"""unique-labels: a label or key used twice in one pipeline, and only there."""

from __future__ import annotations

STEPS = """\
group: g
steps:
  - label: first
    key: one
    commands: [pytest -v tests/a.py]
  - label: {label}
    key: {key}
    commands: [pytest -v tests/b.py]
"""


def test_a_label_used_twice_is_found_at_the_second_naming_the_first(ci):
    ci.area(STEPS.format(label="first", key="two"))
    (finding,) = ci.findings("unique-labels")
    assert finding.line == ci.line_of("label: first") + 3
    assert finding.message == (
        f"label 'first' is already used at .buildkite/test_areas/area.yaml:{ci.line_of('first')}"
    )
    assert finding.hint == "rename one of the two steps' label"


def test_a_key_used_twice_is_found(ci):
    ci.area(STEPS.format(label="second", key="one"))
    (finding,) = ci.findings("unique-labels")
    assert finding.message.startswith("key 'one' is already used at ")
    assert finding.line == ci.line_of("key: one") + 3


def test_distinct_labels_and_keys_are_clean(ci):
    ci.area(STEPS.format(label="second", key="two"))
    assert ci.findings("unique-labels") == []
