"""dead-key: a step or mirror-block key the pipeline generator does not read (its step
model drops it silently), with the key it was most likely meant to be."""

from __future__ import annotations

import pytest

AREA = ".buildkite/test_areas/area.yaml"
NOT_READ = "is not read by the pipeline generator (dropped silently)"
REMOVE = "remove it (the generator ignores it)"

STEP = """\
group: g
steps:
  - label: first
    commands: [pytest -v tests/a.py]
    {key}: 2
"""


def test_a_key_the_generator_does_not_read_is_found_at_its_line(ci):
    ci.area(STEP.format(key="gpus"))
    (finding,) = ci.findings("dead-key")
    assert (finding.rule, finding.path) == ("dead-key", AREA)
    assert finding.line == ci.line_of("gpus: 2")
    assert finding.message == f"step 'first': key 'gpus' {NOT_READ}"
    assert finding.hint == "did you mean `num_devices`?"


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("num_gpus", "num_devices"),
        ("gpus", "num_devices"),
        ("gpu", "device"),
        ("num_gpu", "num_devices"),
        ("nodes", "num_nodes"),
        ("timeout", "timeout_in_minutes"),
        ("dependencies", "source_file_dependencies"),
        ("command", "commands"),
    ],
)
def test_a_key_with_a_usual_meaning_hints_at_the_key_it_means(ci, key, meant):
    ci.area(STEP.format(key=key))
    (finding,) = ci.findings("dead-key")
    assert finding.message == f"step 'first': key {key!r} {NOT_READ}"
    assert finding.hint == f"did you mean `{meant}`?"


@pytest.mark.parametrize(
    ("key", "nearest"),
    [
        ("comands", "commands"),
        ("retries", "retry"),
        ("devices", "device"),  # num_devices is close too, device is closer
        ("working_directory", "working_dir"),
    ],
)
def test_a_misspelled_key_hints_at_the_nearest_key_the_generator_reads(ci, key, nearest):
    ci.area(STEP.format(key=key))
    (finding,) = ci.findings("dead-key")
    assert finding.message == f"step 'first': key {key!r} {NOT_READ}"
    assert finding.hint == f"did you mean `{nearest}`?"


def test_a_key_like_no_key_the_generator_reads_says_to_remove_it(ci):
    ci.area(STEP.format(key="env_vars"))
    (finding,) = ci.findings("dead-key")
    assert finding.line == ci.line_of("env_vars: 2")
    assert finding.message == f"step 'first': key 'env_vars' {NOT_READ}"
    assert finding.hint == REMOVE


def test_a_number_used_as_a_key_is_found_at_its_line(ci):
    ci.area(STEP.format(key="1"))
    (finding,) = ci.findings("dead-key")
    assert finding.line == ci.line_of("1: 2")  # YAML reads the key as the int 1
    assert finding.message == f"step 'first': key 1 {NOT_READ}"
    assert finding.hint == REMOVE


def test_every_key_the_generator_reads_is_clean_on_a_step_and_on_a_mirror_block(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            group: g
            working_dir: /vllm-workspace
            key: first
            depends_on: [build]
            commands: [pytest -v tests/a.py]
            device: h100
            agent_tags: {}
            num_devices: 2
            num_nodes: 1
            source_file_dependencies: [tests/a.py]
            soft_fail: false
            parallelism: 1
            timeout_in_minutes: 30
            mount_buildkite_agent: false
            env: {A: "1"}
            retry: {}
            optional: false
            no_plugin: false
            concurrency: 1
            concurrency_group: first
            no_gpu: false
            dind: false
            mirror:
              amd:
                label: first-amd
                group: g
                working_dir: /vllm-workspace
                key: first-amd
                depends_on: build
                commands: [pytest -v tests/a.py]
                device: mi325_1
                agent_tags: {}
                num_devices: 1
                num_nodes: 1
                source_file_dependencies: [tests/a.py]
                soft_fail: true
                parallelism: 1
                timeout_in_minutes: 30
                mount_buildkite_agent: false
                env: {A: "1"}
                retry: {}
                optional: true
                no_plugin: true
                concurrency: 1
                concurrency_group: first
                no_gpu: false
                dind: false
        """
    )
    assert ci.findings("dead-key") == []


def test_a_mirror_block_key_the_generator_does_not_read_is_found_under_the_mirror(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            mirror:
              amd:
                device: mi325_1
                gpus: 2
        """
    )
    (finding,) = ci.findings("dead-key")
    assert (finding.path, finding.line) == (AREA, ci.line_of("gpus: 2"))
    assert finding.message == f"step 'first [mirror amd]': key 'gpus' {NOT_READ}"
    assert finding.hint == "did you mean `num_devices`?"


def test_a_mirror_named_by_a_number_is_judged_like_any_other(ci):
    """YAML reads ``1:`` as an int: the block is still found (before: a KeyError)."""
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            mirror:
              1:
                device: mi325_1
                gpus: 2
        """
    )
    (finding,) = ci.findings("dead-key")
    assert (finding.path, finding.line) == (AREA, ci.line_of("gpus: 2"))
    assert finding.message == f"step 'first [mirror 1]': key 'gpus' {NOT_READ}"


def test_a_mirror_inside_a_mirror_block_is_not_read(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            mirror:
              amd:
                mirror: {other: {}}
        """
    )
    (finding,) = ci.findings("dead-key")
    assert finding.line == ci.line_of("mirror: {other")
    assert finding.message == f"step 'first [mirror amd]': key 'mirror' {NOT_READ}"
    assert finding.hint == REMOVE


def test_a_steps_key_is_found_once_not_again_for_the_mirror_block_that_inherits_it(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            gpus: 2
            mirror:
              amd:
                device: mi325_1
        """
    )
    (finding,) = ci.findings("dead-key")
    assert finding.line == ci.line_of("gpus: 2")
    assert finding.message == f"step 'first': key 'gpus' {NOT_READ}"


def test_every_key_not_read_of_every_step_and_block_is_found(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: [pytest -v tests/a.py]
            gpus: 2
            nodes: 2
            mirror:
              amd:
                gpu: mi325
              intel:
                timeout: 5
          - label: second
            commands: [pytest -v tests/b.py]
            command: pytest -v tests/b.py
        """
    )
    assert [(f.line, f.message) for f in ci.findings("dead-key")] == [
        (ci.line_of("gpus: 2"), f"step 'first': key 'gpus' {NOT_READ}"),
        (ci.line_of("nodes: 2"), f"step 'first': key 'nodes' {NOT_READ}"),
        (ci.line_of("gpu: mi325"), f"step 'first [mirror amd]': key 'gpu' {NOT_READ}"),
        (ci.line_of("timeout: 5"), f"step 'first [mirror intel]': key 'timeout' {NOT_READ}"),
        (ci.line_of("command: pytest"), f"step 'second': key 'command' {NOT_READ}"),
    ]


def test_a_step_whose_fields_break_the_schema_is_left_to_the_schema_rule(ci):
    ci.area(
        """\
        group: g
        steps:
          - label: first
            commands: 5
            gpus: 2
        """
    )
    assert ci.findings("dead-key") == []
