"""unique-labels: a label or key used twice in one pipeline, and only there."""

from __future__ import annotations

AREA = ".buildkite/test_areas/area.yaml"
A = ".buildkite/test_areas/a.yaml"
B = ".buildkite/test_areas/b.yaml"

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


def test_the_first_use_is_named_at_the_line_of_its_own_field(ci):
    ci.area(STEPS.format(label="second", key="one"))
    (finding,) = ci.findings("unique-labels")
    assert (finding.rule, finding.path) == ("unique-labels", AREA)
    assert finding.message == f"key 'one' is already used at {AREA}:{ci.line_of('key: one')}"
    assert finding.hint == "rename one of the two steps' key"


def test_a_key_used_twice_by_steps_without_labels_is_found(ci):
    ci.area(
        """\
        group: g
        steps:
          - key: one
            commands: [pytest -v tests/a.py]
          - key: one
            commands: [pytest -v tests/b.py]
        """
    )
    (finding,) = ci.findings("unique-labels")
    assert finding.line == ci.line_of("key: one") + 2
    assert finding.message == f"key 'one' is already used at {AREA}:{ci.line_of('key: one')}"


def test_steps_without_keys_are_no_clash(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
          - label: second
            commands: [pytest -v tests/b.py]
        """
    )
    assert ci.findings("unique-labels") == []


def test_a_label_used_in_two_files_of_one_pipeline_is_found_in_the_later_file(ci):
    ci.area(STEPS.format(label="second", key="two"), name="a.yaml")
    ci.area(STEPS.format(label="third", key="three").replace("one", "four"), name="b.yaml")
    (finding,) = ci.findings("unique-labels")
    assert (finding.path, finding.line) == (B, ci.line_of("label: first", name="b.yaml"))
    assert finding.message == (
        f"label 'first' is already used at {A}:{ci.line_of('label: first', name='a.yaml')}"
    )


def test_a_label_used_in_two_pipelines_is_no_clash(ci):
    ci.write(".buildkite/ci_config.yaml", "job_dirs: [.buildkite/main]\n")
    ci.write(".buildkite/ci_config_intel.yaml", "job_dirs: [.buildkite/intel]\n")
    ci.write(".buildkite/main/area.yaml", STEPS.format(label="second", key="two"))
    ci.write(".buildkite/intel/area.yaml", STEPS.format(label="second", key="two"))
    assert ci.findings("unique-labels") == []


def test_a_label_used_twice_in_a_configured_pipeline_names_the_pipeline(ci):
    # the intel folder is read after the main one: the main steps are passed over first
    ci.write(".buildkite/ci_config.yaml", "job_dirs: [.buildkite/main]\n")
    ci.write(".buildkite/ci_config_intel.yaml", "job_dirs: [.buildkite/intel/]\n")
    ci.write(".buildkite/main/area.yaml", STEPS.format(label="second", key="two"))
    ci.write(".buildkite/intel/area.yaml", STEPS.format(label="first", key="two"))
    (finding,) = ci.findings("unique-labels")
    assert (finding.path, finding.line) == (".buildkite/intel/area.yaml", 6)
    assert finding.message == (
        "label 'first' is already used at .buildkite/intel/area.yaml:3"
        " (pipeline ci_config_intel.yaml)"
    )


def test_a_mirror_block_shares_its_steps_label_and_later_steps_are_still_checked(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            key: one
            commands: [pytest -v tests/a.py]
            mirror:
              amd:
                device: mi325_1
          - label: second
            commands: [pytest -v tests/b.py]
          - label: second
            commands: [pytest -v tests/c.py]
        """
    )
    (finding,) = ci.findings("unique-labels")
    assert finding.line == ci.line_of("label: second") + 2
    assert finding.message == (
        f"label 'second' is already used at {AREA}:{ci.line_of('label: second')}"
    )


def test_every_clash_is_found_each_once(ci):
    # label and key of one step on one line, each used again on the same line of another
    # file: six findings, no two with the same the same (path, line, message)
    steps = """\
    group: g
    steps:
      - {label: x, key: y, commands: [a]}
      - {label: x, key: y, commands: [b]}
    """
    ci.area(steps, name="a.yaml")
    ci.area(steps, name="b.yaml")
    first = f"{A}:3"
    assert [(f.path, f.line, f.message) for f in ci.findings("unique-labels")] == [
        (A, 4, f"label 'x' is already used at {first}"),
        (A, 4, f"key 'y' is already used at {first}"),
        (B, 3, f"label 'x' is already used at {first}"),
        (B, 3, f"key 'y' is already used at {first}"),
        (B, 4, f"label 'x' is already used at {first}"),
        (B, 4, f"key 'y' is already used at {first}"),
    ]
