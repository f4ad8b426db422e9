"""lint-ci reads a vLLM-shaped tree as vLLM's pipeline generator does.

The tree is written here, from what vLLM's .buildkite/ and ci-infra's generator show
(conventions.py names each fact): the working_dir default of /vllm-workspace/tests and
``cd`` in commands, the default GPU pool, the CPU family and one-GPU slices, optional
steps, mirror blocks, multi-node steps run from the checkout, ``run_all_patterns``,
and files outside ``job_dirs``.  Clean, it gives no finding; each planted defect gives
one finding of its rule at its line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_ep_kit.lint.lint import lint

AREA = """\
group: Distributed
depends_on:
  - image-build
steps:
- label: Comm ops (default pool, default working_dir)
  key: comm-ops
  num_devices: 2
  soft_fail: true
  parallelism: 2
  retry:
    automatic: true
  source_file_dependencies:
  - vllm/distributed
  - tests/distributed
  - examples/offline.py
  commands:
  - pytest -v -s distributed/test_comm.py
  - cd .. && python3 examples/offline.py -tp 2
- label: Engine on a small CPU
  key: engine-cpu
  device: cpu-small
  working_dir: "/vllm-workspace"
  source_file_dependencies:
  - tests/v1/
  commands:
  - pytest tests/v1/test_engine.py
  - torchrun --nproc-per-node 4 tests/v1/test_engine.py
  - vllm serve model -tp 2
- label: One slice of an H200
  key: h200-slice
  device: h200_18gb
  agent_tags:
    size: small
  source_file_dependencies:
  - tests/v1
  commands:
  - vllm serve model -tp 1
  - pytest -v -s v1/test_engine.py
- label: Heavy NCCL test (optional)
  key: pynccl
  optional: true
  device: h100
  num_devices: 2
  source_file_dependencies:
  - tests/distributed/test_pynccl.py
  commands:
  - pytest -v -s distributed/test_pynccl.py
- label: Comm ops from the workspace root
  key: comm-root
  source_file_dependencies:
  - tests/distributed/
  commands:
  - cd /vllm-workspace && pytest tests/distributed/test_comm.py
  - "find distributed/ -name 'test_*.py' -not -name 'test_gone.py' | xargs pytest"
  mirror:
    amd:
      device: mi325_1
      dind: true
      timeout_in_minutes: 30
      source_file_dependencies:
      - tests/distributed
      commands:
      - bash ../.buildkite/scripts/hardware_ci/run-amd-test.sh distributed
- label: Two nodes
  key: two-nodes
  num_nodes: 2
  num_devices: 2
  source_file_dependencies:
  - tests/distributed
  - .buildkite/scripts/run-multi-node-test.sh
  commands:
  - ./.buildkite/scripts/run-multi-node-test.sh /vllm-workspace/tests 2 2 image "pytest -v distributed/test_comm.py"
- label: Sweep
  key: sweep
  device: h100
  num_devices: 2
  source_file_dependencies:
  - tests/v1/kv/
  commands:
  - SW_ATTN=1 bash v1/kv/sweep.sh
"""
SWEEP = """\
#!/bin/bash
sw_configs=(
  "MODEL=gemma-3"  # sliding window (SW=1)
)
configs=()
if [[ -n "${SW_ATTN:-}" ]]; then
  configs+=("${sw_configs[@]}")
fi
EXTRA_ARGS=()
if [[ -n "${VLLM_SERVE_EXTRA_ARGS:-}" ]]; then
  IFS=',' read -r -a EXTRA_ARGS <<< "$VLLM_SERVE_EXTRA_ARGS"
  for arg in "${EXTRA_ARGS[@]}"; do echo "$arg"; done
fi
"""
CALLER = """\
#!/bin/bash
SCRIPT="v1/kv/sweep.sh"
sweeps=(
  "SW_ATTN=1 GPU_MEMORY_UTILIZATION=0.8"
)
for cfg in "${sweeps[@]}"; do
  read -r -a cfg_parts <<< "$cfg"
  env "${cfg_parts[@]}" bash "${SCRIPT}"
done
"""
FILES = {
    "vllm/__init__.py": "",
    "vllm/distributed/comm.py": "",
    "examples/offline.py": "",
    "tests/conftest.py": "",
    "tests/distributed/test_comm.py": "def test_comm():\n    pass\n",
    "tests/distributed/test_pynccl.py": "def test_pynccl():\n    pass\n",
    "tests/v1/test_engine.py": "def test_engine():\n    pass\n",
    "tests/v1/kv/sweep.sh": SWEEP,
    "setup.py": "",
    ".buildkite/ci_config.yaml": "name: vllm_ci\njob_dirs:\n  - .buildkite/test_areas\n"
    "  - .buildkite/hardware_tests\nrun_all_patterns:\n"
    "  - setup.py\n  - \\.buildkite/scripts/hardware_ci/\n",
    ".buildkite/scripts/run-multi-node-test.sh": "#!/bin/bash\n",
    ".buildkite/scripts/hardware_ci/run-amd-test.sh": "#!/bin/bash\n",
    ".buildkite/test_areas/distributed.yaml": AREA,
    ".buildkite/hardware_tests/README.yaml": "# no steps here: not an area\nnotes: [1, 2]\n",
    ".buildkite/lm-eval-harness/configs/model.yaml": "model_name: x\ntasks: [5, {",  # not read
}


@pytest.fixture
def tree(tmp_path) -> Path:
    for rel, text in FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def plant(
    tree: Path,
    old: str,
    new: str,
    file: str = ".buildkite/test_areas/distributed.yaml",
) -> int:
    """Replace ``old`` (must occur once) by ``new``; the 1-based line where it was."""
    path = tree / file
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def only(findings, rule):
    mine = [f for f in findings if f.rule == rule]
    assert len(mine) == 1, "\n".join(f.format() for f in findings)
    return mine[0]


def test_the_conventions_give_no_finding(tree):
    findings = lint(tree)
    assert findings == [], "\n".join(f.format() for f in findings)


def test_dead_key_with_what_was_meant(tree):
    line = plant(tree, "  key: comm-ops\n", "  key: comm-ops\n  num_gpus: 2\n") + 1
    finding = only(lint(tree), "dead-key")
    assert finding.line == line
    assert "key 'num_gpus' is not read" in finding.message
    assert "did you mean `num_devices`" in finding.hint


def test_dead_key_in_a_mirror_block(tree):
    line = plant(tree, "      dind: true\n", "      dind: true\n      autorun_on_main: true\n") + 1
    finding = only(lint(tree), "dead-key")
    assert finding.line == line and "[mirror amd]" in finding.message


def test_entry_without_py_matches_nothing(tree):
    line = plant(tree, "  - tests/v1/\n", "  - tests/v1/\n  - tests/v1/test_engine\n") + 1
    finding = only(lint(tree), "stale-dependency")
    assert finding.line == line
    assert "tests/v1/test_engine.py exists" in finding.message
    assert finding.hint == "write `tests/v1/test_engine.py`"


def test_an_optional_steps_entries_are_judged_and_say_when_they_count(tree):
    plant(tree, "  - tests/distributed/test_pynccl.py\n", "  - tests/distributed/test_pynccl\n")
    finding = only(lint(tree), "stale-dependency")
    assert "'tests/distributed/test_pynccl' matches no change" in finding.message
    # the test it runs is then uncovered: the same cause, said by the same finding
    assert finding.message.endswith(
        "the step runs tests/distributed/test_pynccl.py, so a change to it does not re-run the "
        "step (an optional step: this counts once it is not)"
    )
    assert [f for f in lint(tree) if f.rule == "uncovered"] == []
    plant(tree, "  optional: true\n", "")
    finding = only(lint(tree), "stale-dependency")
    assert finding.message.endswith("so a change to it does not re-run the step")


def test_an_entry_naming_nothing(tree):
    line = plant(tree, "  - vllm/distributed\n", "  - vllm/distributed\n  - vllm/executor/\n") + 1
    finding = only(lint(tree), "stale-dependency")
    assert finding.line == line and "'vllm/executor/' names nothing" in finding.message


def test_a_test_its_dependencies_do_not_cover(tree):
    plant(tree, "  - tests/distributed\n  - examples/offline.py\n", "  - examples/offline.py\n")
    finding = only(lint(tree), "uncovered")
    assert "runs tests/distributed/test_comm.py, which no entry" in finding.message
    text = (tree / ".buildkite/test_areas/distributed.yaml").read_text().splitlines()
    assert text[finding.line - 1] == "  - pytest -v -s distributed/test_comm.py"


def test_a_command_needing_more_gpus_than_the_default_pool_gives(tree):
    line = plant(
        tree,
        "  - cd .. && python3 examples/offline.py -tp 2\n",
        "  - cd .. && python3 examples/offline.py -tp 2 -dp 4\n",
    )
    finding = only(lint(tree), "gpu-count")
    assert finding.line == line
    # 2 devices choose gpu_4_queue, whose runner passes its 4 GPUs
    assert "gets 4 GPU(s) but a command needs 8 (DP=4 x TP=2)" in finding.message


def test_a_one_gpu_slice_holds_one_gpu(tree):
    plant(tree, "  device: h200_18gb\n", "  device: h200_18gb\n  num_devices: 2\n")
    plant(tree, "  - vllm serve model -tp 1\n", "  - vllm serve model -tp 2\n")
    assert "gets 1 GPU(s) but a command needs 2" in only(lint(tree), "gpu-count").message


def test_a_missing_file_is_resolved_from_the_working_dir(tree):
    line = plant(
        tree,
        "  - pytest -v -s distributed/test_comm.py\n",
        "  - pytest -v -s distributed/test_gone.py\n",
    )
    finding = only(lint(tree), "path-exists")
    assert finding.line == line
    assert "(tests/distributed/test_gone.py from /vllm-workspace/tests)" in finding.message


def test_a_cd_holds_for_the_commands_after_it(tree):
    plant(
        tree,
        "  - cd .. && python3 examples/offline.py -tp 2\n",
        "  - cd ..\n  - python3 examples/gone.py\n",
    )
    assert "examples/gone.py" in only(lint(tree), "path-exists").message


def test_a_branch_no_step_enables(tree):
    plant(tree, "  - SW_ATTN=1 bash v1/kv/sweep.sh\n", "  - bash v1/kv/sweep.sh\n")
    finding = only(lint(tree), "gated-branch")  # not the VLLM_SERVE_EXTRA_ARGS knob
    assert finding.path == "tests/v1/kv/sweep.sh" and finding.line == 6
    assert "SW_ATTN" in finding.message


def test_a_branch_enabled_by_the_script_that_calls_it(tree):
    """``env "${cfg_parts[@]}" bash "${SCRIPT}"``: the caller's config arrays set it."""
    (tree / "tests/v1/kv/sweep_all.sh").write_text(CALLER)
    plant(tree, "  - SW_ATTN=1 bash v1/kv/sweep.sh\n", "  - bash v1/kv/sweep_all.sh\n")
    assert lint(tree) == []
    (tree / "tests/v1/kv/sweep_all.sh").write_text(CALLER.replace("SW_ATTN=1 ", ""))
    assert "SW_ATTN" in only(lint(tree), "gated-branch").message


def test_a_test_listed_but_run_only_by_an_optional_step(tree):
    """The MNNVL suite's case: the 2-GPU step lists it, only an optional step runs it."""
    line = (
        plant(
            tree,
            "  - tests/distributed\n  - examples/offline.py\n",
            "  - tests/distributed\n  - tests/distributed/test_pynccl.py\n"
            "  - examples/offline.py\n",
        )
        + 1
    )
    finding = only(lint(tree), "listed-not-run")
    assert finding.line == line
    assert (
        "lists tests/distributed/test_pynccl.py but does not run it; only optional steps "
        "run it ('Heavy NCCL test (optional)'), which only nightly builds"
    ) in finding.message


def test_a_selector_naming_no_test(tree):
    line = plant(
        tree,
        "  - pytest -v -s distributed/test_comm.py\n",
        "  - pytest -v -s distributed/test_comm.py::test_gone\n",
    )
    finding = only(lint(tree), "missing-test")
    assert finding.line == line
    assert "tests/distributed/test_comm.py has no test test_gone" in finding.message
    plant(tree, "::test_gone\n", "::test_comm[param-1]\n")
    assert not [f for f in lint(tree) if f.rule == "missing-test"]


def test_commands_handed_to_a_runner_script_are_read(tree):
    """``bash run-cpu-test.sh 30m "pytest ..."``: the runner starts in the checkout's root."""
    line = plant(
        tree,
        "      - bash ../.buildkite/scripts/hardware_ci/run-amd-test.sh distributed\n",
        '      - bash ../.buildkite/scripts/hardware_ci/run-amd-test.sh "cd tests && '
        'pytest -v distributed/test_gone.py"\n',
    )
    finding = only(lint(tree), "path-exists")
    assert finding.line == line and "distributed/test_gone.py" in finding.message


def test_a_suppression_needs_a_reason(tree):
    plant(
        tree, "  key: comm-ops\n", "  key: comm-ops\n  # lint-ci: ignore[dead-key]\n  num_gpus: 2\n"
    )
    findings = lint(tree)
    assert sorted(f.rule for f in findings) == ["dead-key", "suppression"]  # nothing silenced
    assert "gives no reason" in only(findings, "suppression").message
    plant(
        tree,
        "# lint-ci: ignore[dead-key]\n",
        "# lint-ci: ignore[dead-key] read by our own dashboard\n",
    )
    assert lint(tree) == []


def run_cli(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", "lint-ci", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_explain_answers_which_steps_run_a_test(tree):
    out = run_cli("--root", str(tree), "--explain", "tests/distributed/test_pynccl.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(
        "'Heavy NCCL test (optional)' runs it" in line and "optional" in line for line in lines
    ), out.stdout
    assert any(
        "'Comm ops (default pool, default working_dir)' is selected by a change to it" in line
        and "default GPU pool, 2 GPU(s)" in line
        for line in lines
    ), out.stdout
    assert (
        "run by 0 non-optional step(s), 1 optional -- only nightly builds (NIGHTLY=1), PRs "
        "labelled ready-run-all-tests and builds that name its key in VLLM_CI_ONLY_STEP_KEYS "
        "run it"
    ) in out.stderr


def test_baseline_json_and_github_formats(tree, tmp_path):
    import json

    plant(tree, "  key: comm-ops\n", "  key: comm-ops\n  num_gpus: 2\n")
    out = run_cli("--root", str(tree), "--format", "json")
    assert out.returncode == 1
    (row,) = json.loads(out.stdout)
    assert set(row) == {"path", "line", "rule", "message", "fix", "also"}
    assert row["rule"] == "dead-key" and row["also"] == []
    baseline = tmp_path / "baseline.json"
    baseline.write_text(out.stdout)
    plant(tree, "  key: comm-ops\n", "  key: comm-ops\n  gpu: h100\n")  # moves the old one
    out = run_cli("--root", str(tree), "--baseline", str(baseline))
    assert out.returncode == 1 and out.stdout.count("\n") == 1 and "'gpu'" in out.stdout
    out = run_cli("--root", str(tree), "--format", "github", "--select", "dead-key")
    assert all(
        line.startswith("::error file=.buildkite/test_areas/distributed.yaml,line=")
        for line in out.stdout.splitlines()
    )
    assert run_cli("--root", str(tree), "--ignore", "dead-key").returncode == 0
    bad = run_cli("--root", str(tree), "--select", "nosuch")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


MARKED = """\
from tests.utils import multi_gpu_test


@multi_gpu_test(num_gpus=4)
def test_four():
    pass


def test_one():
    pass
"""


def test_tests_marked_for_more_gpus_than_any_step_that_runs_them(tree):
    (tree / "tests/distributed/test_comm.py").write_text(MARKED.replace("=4", "=8"))
    findings = [f for f in lint(tree) if f.rule == "gpu-count"]
    assert len(findings) == 2, findings  # both steps that run the file have fewer GPUs
    assert all(
        "tests/distributed/test_comm.py::test_four is marked for 8" in f.message for f in findings
    )
    assert "gets 4 GPU(s)" in findings[0].message  # gpu_4_queue's whole runner
    # an 8-GPU pod running the file: the 8-GPU test runs there
    plant(
        tree,
        "- label: Two nodes\n",
        "- label: Eight GPUs\n  key: eight\n  device: h100\n  num_devices: 8\n"
        "  source_file_dependencies:\n  - tests/distributed\n  commands:\n"
        "  - pytest -v -s distributed/test_comm.py\n- label: Two nodes\n",
    )
    assert [f for f in lint(tree) if f.rule == "gpu-count"] == []
    # the 8-GPU step selecting the 1-GPU test alone: the 8-GPU test runs nowhere again
    plant(
        tree,
        "  - pytest -v -s distributed/test_comm.py\n- label: Two nodes\n",
        "  - pytest -v -s distributed/test_comm.py::test_one\n- label: Two nodes\n",
    )
    assert len([f for f in lint(tree) if "test_four is marked for 8" in f.message]) == 2


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "--explain: expected a path in the repository"),
        (".", "--explain: expected a path in the repository"),
        ("/etc/passwd", "--explain: /etc/passwd is outside --root"),
        ("tests/distributed/test_gone.py", "--explain: tests/distributed/test_gone.py does not"),
    ],
)
def test_explain_refuses_a_path_it_cannot_answer_for(tree, path, message):
    """An empty path, one outside the tree or one that is not there is refused, not answered
    with the whole lint or "run by 0"."""
    out = run_cli("--root", str(tree), "--explain", path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_explain_takes_an_absolute_path_inside_the_tree(tree):
    out = run_cli("--root", str(tree), "--explain", str(tree / "tests/distributed/test_pynccl.py"))
    assert out.returncode == 0
    assert "tests/distributed/test_pynccl.py: run by 0 non-optional step(s)" in out.stderr
