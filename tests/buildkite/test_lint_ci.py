"""lint-ci passes on this repository and catches each upstream defect when planted.

Each test copies the repository's CI-relevant files into a temporary tree,
plants one defect (as upstream PR 40623's review found them, plus a missing
file), and requires a finding of the right rule at the right place.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_ep_kit.lint.lint import lint

REPO = Path(__file__).resolve().parents[2]
COPIED = [".buildkite", "scripts", "tests", "vllm_ep_kit", "requirements"]


@pytest.fixture
def tree(tmp_path) -> Path:
    for name in COPIED:
        shutil.copytree(
            REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return tmp_path


def edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (must occur) and return the 1-based line where it was."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1))
    return line


def rules_at(findings, rule):
    return [f for f in findings if f.rule == rule]


def test_repository_is_clean():
    findings = lint(REPO)
    assert findings == [], "\n".join(f.format() for f in findings)


def test_gated_array_never_enabled(tree):
    edit(
        tree / ".buildkite/test_areas/disaggregated.yaml",
        "      - SW_ATTN=1 bash scripts/disaggregated/config_sweep_accuracy_test.sh\n",
        "",
    )
    edit(tree / ".buildkite/test_areas/e2e_integration.yaml", " SW_ATTN=1 SW_HMA=1", " SW_HMA=1")
    (finding,) = rules_at(lint(tree), "gated-branch")
    assert finding.path == "scripts/disaggregated/config_sweep_accuracy_test.sh"
    script = (tree / finding.path).read_text().splitlines()
    assert "SW_ATTN" in script[finding.line - 1]  # points at the gating condition
    assert "branch gated by SW_ATTN is never enabled" in finding.message
    assert "SW_ATTN=1 bash" in finding.hint


def test_flag_spelled_true_instead_of_1(tree):
    line = edit(
        tree / ".buildkite/test_areas/distributed.yaml",
        "VLLM_EP_KIT_STRICT=1 pytest -v tests/distributed/test_mnnvl_alltoall.py\n"
        "      - vllm-ep-kit check",
        "VLLM_EP_KIT_STRICT=True pytest -v tests/distributed/test_mnnvl_alltoall.py\n"
        "      - vllm-ep-kit check",
    )
    (finding,) = rules_at(lint(tree), "flag-spelling")
    assert (finding.path, finding.line) == (".buildkite/test_areas/distributed.yaml", line)
    assert "VLLM_EP_KIT_STRICT=True while other steps spell it 1/0" in finding.message


def test_true_does_not_open_a_branch_that_tests_for_1(tree):
    edit(tree / ".buildkite/test_areas/disaggregated.yaml", "- SW_HMA=1 bash", "- SW_HMA=True bash")
    edit(tree / ".buildkite/test_areas/e2e_integration.yaml", " SW_HMA=1", "")
    (finding,) = rules_at(lint(tree), "gated-branch")
    assert (
        "SW_HMA is never enabled: steps set it only to True, the script tests == 1"
        in finding.message
    )


def test_command_needing_more_gpus_than_the_step_has(tree):
    """Upstream's disaggregated split ran a multi-GPU command on a step that gets fewer."""
    line = edit(
        tree / ".buildkite/test_areas/disaggregated.yaml",
        "    device: h100\n    num_devices: 4\n    source_file_dependencies:\n"
        "      - scripts/disaggregated/\n      - vllm_ep_kit/\n    commands:\n"
        "      - RUN_TP=1 bash scripts/disaggregated/config_sweep_accuracy_test.sh\n",
        "    device: h100\n    num_devices: 2\n    source_file_dependencies:\n"
        "      - scripts/disaggregated/\n      - vllm_ep_kit/\n    commands:\n"
        "      - RUN_TP=1 bash scripts/disaggregated/config_sweep_accuracy_test.sh\n"
        "      - vllm serve model --tensor-parallel-size 2 --data-parallel-size=2\n",
    )
    (finding,) = rules_at(lint(tree), "gpu-count")
    assert finding.path == ".buildkite/test_areas/disaggregated.yaml"
    assert finding.line == line + 7
    assert "gets 2 GPU(s) but a command needs 4 (DP=2 x TP=2)" in finding.message


def test_missing_dependency(tree):
    area = tree / ".buildkite/test_areas/distributed.yaml"
    text = area.read_text()
    block = text.split("  - label: EP kit harness (CPU)")[1].split("  - label:")[0]
    area.write_text(text.replace(block, block.replace("      - vllm_ep_kit/harness/\n", ""), 1))
    (finding,) = rules_at(lint(tree), "dependencies")
    assert "EP kit harness (CPU)" in finding.message
    assert "vllm_ep_kit/harness/" in finding.message + finding.hint
    lines = area.read_text().splitlines()
    assert lines[finding.line - 2].strip() == "source_file_dependencies:"  # at its list


def test_step_runs_a_file_that_does_not_exist(tree):
    line = edit(
        tree / ".buildkite/test_areas/distributed.yaml",
        "pytest -v tests/harness\n",
        "pytest -v tests/harness/test_no_such_file.py\n",
    )
    (finding,) = rules_at(lint(tree), "path-exists")
    assert finding.line == line
    assert "tests/harness/test_no_such_file.py, which does not exist" in finding.message


def test_duplicate_label_and_schema_violation(tree):
    edit(
        tree / ".buildkite/test_areas/disaggregated.yaml",
        "label: Disaggregated accuracy sweep, TP",
        "label: CI lint",
    )
    edit(
        tree / ".buildkite/test_areas/e2e_integration.yaml",
        "    timeout_in_minutes: 10\n",
        "    timeout_in_minutes: 10\n    gpus: 2\n",
    )
    findings = lint(tree)
    assert any(
        "label 'CI lint' is already used" in f.message for f in rules_at(findings, "unique-labels")
    )
    (dead,) = rules_at(findings, "dead-key")
    assert "key 'gpus' is not read by the pipeline generator" in dead.message


def test_cli_exit_codes_and_format(tree):
    edit(
        tree / ".buildkite/test_areas/distributed.yaml",
        "pytest -v tests/harness\n",
        "pytest -v tests/harness/missing.py\n",
    )
    bad = subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", "lint-ci", "--root", str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stdout.startswith(".buildkite/test_areas/distributed.yaml:")
    assert ": path-exists: " in bad.stdout and "(fix: " in bad.stdout
    good = subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", "lint-ci", "--root", str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0, good.stdout


ALIAS_BOMB = (
    "group: g\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    + "steps:\n- label: bomb\n  commands: *a8\n"
)
MALFORMED = {  # file content -> (rule, line, words of the message)
    "commands-int": (
        b"group: g\nsteps:\n- label: a\n  device: cpu\n  commands: 5\n",
        "schema",
        5,
        "steps/0/commands: 5 is not of type 'array'",
    ),
    "commands-mixed": (
        b"group: g\nsteps:\n- label: a\n  device: cpu\n  commands: [5, [a]]\n",
        "schema",
        5,
        "steps/0/commands/0: 5 is not of type 'string'",
    ),
    "env-int": (
        b"group: g\nsteps:\n- label: a\n  device: cpu\n  commands: [x]\n  env: 5\n",
        "schema",
        6,
        "steps/0/env: 5 is not of type 'object'",
    ),
    "deps-int": (
        b"group: g\nsteps:\n- label: a\n  device: cpu\n  commands: [x]\n"
        b"  source_file_dependencies: 5\n",
        "schema",
        6,
        "is not of type 'array'",
    ),
    "latin-1": (
        "group: g\nsteps:\n- label: caf\xe9\n  commands: [x]\n".encode("latin-1"),
        "encoding",
        3,
        "not UTF-8 text: byte 0xe9",
    ),
    "binary": (bytes(range(256)) * 4, "encoding", 1, "binary file"),
    "unclosed": (b"group: g\nsteps: [\n", "yaml", 3, "while parsing a flow node"),
    "alias-bomb": (ALIAS_BOMB.encode(), "yaml", 1, "expands to more than 200,000 YAML nodes"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_one_finding_not_a_traceback(tmp_path, case):
    """Each malformed file is one finding at its line, in seconds: not a traceback from a
    rule (TypeError, AttributeError, UnicodeDecodeError), not minutes on an alias bomb."""
    import time

    content, rule, line, words = MALFORMED[case]
    area = tmp_path / ".buildkite/test_areas/bad.yaml"
    area.parent.mkdir(parents=True)
    area.write_bytes(content)
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", "lint-ci", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 60
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    assert any(f"bad.yaml:{line}: {rule}: " in text and words in text for text in lines), out.stdout
    assert all(text.startswith(".buildkite/test_areas/bad.yaml:") for text in lines), out.stdout


def test_any_step_shape_gives_findings_never_an_exception(tmp_path_factory):
    """Steps made of the generator's own keys (and others) holding any YAML value."""
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from vllm_ep_kit.lint import conventions

    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-3, 9)
        | st.text(max_size=12)
        | st.sampled_from(["tests/x.py", "cd ..", "-tp 2", "/vllm-workspace"]),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["amd", "x", "queue"]), inner, max_size=2)
        ),
        max_leaves=6,
    )
    step = st.dictionaries(
        st.sampled_from(sorted(conventions.NEWEST_GENERATOR.step_keys) + ["num_gpus", "x"]),
        values,
        max_size=6,
    )
    area = st.fixed_dictionaries({"group": values, "steps": st.lists(step | values, max_size=3)})

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(area)
    def case(data):
        root = tmp_path_factory.mktemp("fuzz")
        path = root / ".buildkite/test_areas/fuzz.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(data))
        for finding in lint(root):
            assert finding.path == ".buildkite/test_areas/fuzz.yaml", finding

    case()
