"""A tree is read as the pipeline generator of its own date read it: each convention that
changed (dependency matching, the keys read, devices, which builds run optional steps)
turns on at its ci-infra commit, and findings of one cause are folded into one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.buildkite.rules.conftest import CiTree
from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.lint import lint

APRIL = "2026-04-23"  # substring matching, no timeouts, the label does not run optional steps
AUGUST = "2026-08-22"


def found(ci: CiTree, rule: str, as_of: str | None = None):
    return [
        f
        for f in lint(ci.root, select={rule}, generator=conventions.generator(as_of))
        if f.rule == rule
    ]


def test_each_change_holds_from_its_own_commit_on():
    before, after = conventions.generator("2026-06-22"), conventions.generator("2026-06-24")
    assert (before.match, after.match) == ("substring", "folder")
    assert "timeout_in_minutes" not in conventions.generator("2026-07-09").step_keys
    assert "timeout_in_minutes" in conventions.generator("2026-07-11").step_keys
    assert not conventions.generator("2026-08-04").exclusions
    assert conventions.generator("2026-08-06").exclusions
    assert conventions.generator("2026-03-22").gpus_of("cpu-small", None) == 1  # unknown: a GPU
    assert conventions.generator("2026-03-24").gpus_of("cpu-small", None) == 0
    assert conventions.generator("2026-04-30").k8s_devices == {"h100", "a100"}
    assert "b200-k8s" in conventions.generator("2026-05-02").k8s_devices


def test_a_change_holds_from_its_minute_in_utc():
    change = next(c for c in conventions.HISTORY if c.rev == "09da344")
    assert change.since == "2026-06-23T04:04Z"
    assert conventions.generator("2026-06-23T04:03Z").match == "substring"
    assert conventions.generator("2026-06-23T04:04Z").match == "folder"
    # a time in another zone is compared in UTC: 21:30 on the 22nd in California is after
    assert conventions.generator("2026-06-22T21:30:00-07:00").match == "folder"


def test_the_ready_run_all_tests_label_ran_optional_steps_in_three_spans():
    runs = {
        day: conventions.generator(day).label_runs_optional
        for day in ("2026-02-01", "2026-04-07", "2026-04-09", "2026-04-25", "2026-04-27", AUGUST)
    }
    assert runs == {
        "2026-02-01": True,
        "2026-04-07": True,
        "2026-04-09": False,
        "2026-04-25": False,
        "2026-04-27": True,
        AUGUST: True,
    }
    assert conventions.generator("2026-04-09").optional_runs() == "nightly builds (NIGHTLY=1)"


def test_no_date_is_the_newest_and_a_date_before_the_history_is_its_first_change():
    assert conventions.generator().rev == conventions.HISTORY[-1].rev
    assert conventions.generator("2025-06-01").rev == conventions.HISTORY[0].rev


def test_a_known_revision_gives_its_date_and_an_unknown_one_none():
    assert conventions.revision_date("09da344") == "2026-06-23T04:04Z"
    assert conventions.revision_date("09da3441234") == "2026-06-23T04:04Z"
    assert conventions.revision_date("0000000") is None
    assert conventions.revision_date("09d") is None  # too short to name a commit


SUBSTRING_STEP = """\
group: g
steps:
  - label: unit
    commands:
      - pytest -v tests/unit/test_a.py
    source_file_dependencies:
      - '{entry}'
"""


def substring_tree(ci: CiTree, entry: str) -> CiTree:
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    return ci.area(SUBSTRING_STEP.format(entry=entry))


def test_an_entry_without_its_suffix_matched_before_folder_matching(ci):
    substring_tree(ci, "tests/unit/test_a")
    assert found(ci, "stale-dependency", APRIL) == []
    assert found(ci, "uncovered", APRIL) == []
    (finding,) = found(ci, "stale-dependency", AUGUST)
    assert "tests/unit/test_a.py exists" in finding.message


def test_an_entry_that_is_part_of_no_path_is_stale_in_either_era(ci):
    substring_tree(ci, "tests/unit/test_gone")
    (april,) = found(ci, "stale-dependency", APRIL)
    assert april.message == (
        "step 'unit': entry 'tests/unit/test_gone' is part of no path in the tree "
        "(ci-infra's pipeline generator (as of 2026-04-23, conventions of 5779cfd) matches an entry as a "
        "substring)"
    )
    (august,) = found(ci, "stale-dependency", AUGUST)
    assert "names nothing in the tree" in august.message


def test_an_entry_part_of_a_longer_path_matched_before_folder_matching(ci):
    substring_tree(ci, "tests/unit/test_")  # a part of tests/unit/test_a.py
    assert found(ci, "stale-dependency", APRIL) == []
    assert len(found(ci, "stale-dependency", AUGUST)) == 1


def test_an_exclusion_excluded_only_from_its_commit_on(ci):
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    ci.area(
        SUBSTRING_STEP.format(entry="tests/").replace(
            "      - 'tests/'\n", "      - 'tests/'\n      - '!tests/unit/'\n"
        )
    )
    assert found(ci, "uncovered", "2026-08-04") == []  # `!tests/unit/` was a path: no effect
    (finding,) = found(ci, "uncovered", AUGUST)
    assert "runs tests/unit/test_a.py" in finding.message


TIMEOUTS = """\
group: g
steps:
  - label: one
    timeout_in_minutes: 10
    commands: [echo one]
  - label: two
    timeout_in_minutes: 20
    commands: [echo two]
"""


def test_a_key_a_later_generator_reads_is_one_finding_with_its_date(ci):
    ci.area(TIMEOUTS).area(TIMEOUTS, name="other.yaml")
    (finding,) = found(ci, "dead-key", APRIL)
    assert finding.path == ".buildkite/test_areas/area.yaml"
    assert finding.line == ci.line_of("timeout_in_minutes: 10")
    assert finding.message == (
        "key 'timeout_in_minutes' is not read by ci-infra's pipeline generator (as of "
        "2026-04-23, conventions of 5779cfd): it is read from 2026-07-10 (e0a048e); until then it does "
        "nothing in any step"
    )
    assert finding.also == ("3 more step(s) in 2 file(s)",)
    assert found(ci, "dead-key", AUGUST) == []


def test_a_key_no_generator_reads_is_still_found_per_step(ci):
    ci.area(TIMEOUTS.replace("timeout_in_minutes", "num_gpus"))
    assert len(found(ci, "dead-key", APRIL)) == 2


SHARED_ENTRY = """\
group: g
steps:
  - label: one
    commands: [pytest -v tests/test_a.py]
    source_file_dependencies: [tests/test_a.py, vllm/gone/]
  - label: two
    commands: [pytest -v tests/test_a.py]
    source_file_dependencies: [tests/test_a.py, vllm/gone/]
    mirror:
      amd:
        device: mi325_1
"""


def test_one_stale_entry_in_several_steps_and_a_mirror_is_one_finding_listing_the_others(ci):
    ci.write("tests/test_a.py", "def test_a():\n    pass\n").area(SHARED_ENTRY)
    (finding,) = found(ci, "stale-dependency", AUGUST)
    assert finding.line == 5
    assert finding.message == "step 'one': entry 'vllm/gone/' names nothing in the tree"
    assert finding.also == (".buildkite/test_areas/area.yaml:8",)


def test_a_mirror_inheriting_a_stale_entry_is_folded_into_its_step(ci):
    ci.write("tests/test_a.py", "def test_a():\n    pass\n").area(
        SHARED_ENTRY.split("  - label: two")[0].replace(
            "tests/test_a.py, vllm/gone/]", "vllm/gone/]\n    mirror: {amd: {device: mi325_1}}"
        )
    )
    (finding,) = found(ci, "stale-dependency", AUGUST)
    assert finding.also == ("mirror amd",)
    assert "[mirror" not in finding.message


def test_one_uncovered_script_of_several_steps_is_one_finding(ci):
    ci.write("tests/test_a.py").write("scripts/run.sh")
    ci.area(
        """\
        group: g
        steps:
          - label: one
            commands: [bash scripts/run.sh]
            source_file_dependencies: [vllm/]
          - label: two
            commands: [bash scripts/run.sh]
            source_file_dependencies: [vllm/]
        """
    )
    (finding,) = found(ci, "uncovered", AUGUST)
    assert finding.message.startswith("step 'one' runs scripts/run.sh")
    assert finding.also == (".buildkite/test_areas/area.yaml:7",)
    assert "(also .buildkite/test_areas/area.yaml:7)" in finding.format()


def test_an_entry_whose_every_change_runs_every_step_is_not_judged(ci):
    ci.write("tests/test_a.py").write(".buildkite/ci_config.yaml", RUN_ALL)
    ci.write(".buildkite/test_areas/area.yaml", SUBSTRING_STEP.format(entry="csrc/gone/"))
    assert found(ci, "stale-dependency", AUGUST) == []
    ci.write(".buildkite/test_areas/area.yaml", SUBSTRING_STEP.format(entry="csrc/cpu/gone/"))
    assert len(found(ci, "stale-dependency", AUGUST)) == 1  # excluded from run-all: it matters


RUN_ALL = """\
job_dirs: [.buildkite/test_areas]
run_all_patterns: [csrc/]
run_all_exclude_patterns: [csrc/cpu/]
"""


def git(root: Path, *args: str, date: str = "") -> None:
    env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else None
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        env=env,
    )


def test_a_git_tree_is_read_as_of_its_last_change_to_its_ci_files(ci):
    substring_tree(ci, "tests/unit/test_a")
    git(ci.root, "init", "-q")
    git(ci.root, "add", "-A")
    git(ci.root, "commit", "-q", "-m", "ci", date="2026-04-23T10:00:00+00:00")
    assert conventions.tree_date(ci.root).startswith("2026-04-23T10:00:00")
    assert [f for f in lint(ci.root) if f.rule == "stale-dependency"] == []  # April: substring
    ci.write("README.md", "later, not CI\n")
    git(ci.root, "add", "-A")
    git(ci.root, "commit", "-q", "-m", "docs", date="2026-09-01T10:00:00+00:00")
    assert conventions.tree_date(ci.root).startswith("2026-04-23")  # only .buildkite/ counts


def test_a_tree_without_git_has_no_date(ci):
    assert conventions.tree_date(substring_tree(ci, "tests/unit/test_a").root) is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vllm_ep_kit.cli", "lint-ci", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_reads_as_of_a_date_or_a_revision_and_says_which(ci):
    substring_tree(ci, "tests/unit/test_a")
    april = run_cli("--root", str(ci.root), "--as-of", APRIL)
    assert april.returncode == 0, april.stdout
    assert (
        "read as ci-infra's pipeline generator (as of 2026-04-23, conventions of 5779cfd)"
        in april.stderr
    )
    by_rev = run_cli("--root", str(ci.root), "--generator-rev", "09da344", "--format", "json")
    assert by_rev.returncode == 1
    (row,) = json.loads(by_rev.stdout)
    assert row["rule"] == "stale-dependency" and row["also"] == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--as-of", "yesterday"], "--as-of: 'yesterday' is not a date"),
        (["--generator-rev", "abcdef0"], "--generator-rev: 'abcdef0' is not a ci-infra commit"),
    ],
)
def test_a_bad_date_or_revision_is_one_line_and_exit_2(ci, args, says):
    out = run_cli("--root", str(substring_tree(ci, "tests/unit/test_a").root), *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and says in out.stderr


def test_as_of_and_a_revision_together_are_refused(ci):
    out = run_cli("--root", str(ci.root), "--as-of", APRIL, "--generator-rev", "09da344")
    assert out.returncode == 2 and "not allowed with" in out.stderr


def test_explain_names_the_builds_that_run_an_optional_step_in_its_era(ci):
    ci.write("tests/test_a.py").area(
        """\
        group: g
        steps:
          - label: heavy
            optional: true
            commands: [pytest -v tests/test_a.py]
        """
    )
    out = run_cli("--root", str(ci.root), "--as-of", "2026-04-09", "--explain", "tests/test_a.py")
    assert out.returncode == 0
    assert "only nightly builds (NIGHTLY=1) run it" in out.stderr
    out = run_cli("--root", str(ci.root), "--as-of", "2026-04-27", "--explain", "tests/test_a.py")
    assert (
        "only nightly builds (NIGHTLY=1) and PRs labelled ready-run-all-tests run it" in out.stderr
    )


def test_a_folder_a_step_runs_is_covered_by_its_entry_with_a_slash_in_either_era(ci):
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    ci.area(
        SUBSTRING_STEP.format(entry="tests/unit/").replace("tests/unit/test_a.py", "tests/unit")
    )
    assert found(ci, "uncovered", APRIL) == []
    assert found(ci, "uncovered", AUGUST) == []
    ci.area(
        SUBSTRING_STEP.format(entry="tests/other/").replace("tests/unit/test_a.py", "tests/unit")
    )
    assert len(found(ci, "uncovered", APRIL)) == 1


AMD = """\
steps:
- label: Kernels
  agent_pool: mi325_1
  mirror_hardwares: [amdproduction]
  source_file_dependencies:
  - tests/kernels/test_a
  - vllm/gone/
  commands:
  - pytest -v -s kernels/test_a.py
- label: Kernels
  agent_pool: mi325_4
  num_gpus: 2
  fast_check: true
  source_file_dependencies: [tests/kernels/]
  commands:
  - pytest -v -s kernels/test_a.py
  - vllm serve m -tp 4
- label: Other
  agent_pool: mi325_1
  fast_check: true
  source_file_dependencies: [tests/kernels/]
  commands: [pytest -v -s kernels/test_a.py]
"""


def amd_tree(ci: CiTree) -> CiTree:
    ci.write("tests/kernels/test_a.py", "def test_a():\n    pass\n")
    return ci.write(".buildkite/test-amd.yaml", AMD).area(
        "group: g\nsteps:\n- label: Kernels\n  commands: [pytest -v tests/kernels/test_a.py]\n"
    )


def amd_findings(ci: CiTree, rule: str) -> list:
    return [f for f in found(ci, rule, AUGUST) if f.path == ".buildkite/test-amd.yaml"]


def test_the_amd_pipeline_matches_an_entry_as_a_prefix(ci):
    amd_tree(ci)
    (stale,) = amd_findings(ci, "stale-dependency")
    assert stale.message == (
        "step 'Kernels': entry 'vllm/gone/' is part of no path in the tree (ci-infra's AMD "
        "template (test-template-amd.j2) matches an entry as a prefix)"
    )  # tests/kernels/test_a is a prefix of tests/kernels/test_a.py: no finding
    assert amd_findings(ci, "uncovered") == []


def test_the_amd_pipeline_reads_its_own_keys_and_folds_one_dropped_key(ci):
    amd_tree(ci)
    (dead,) = amd_findings(ci, "dead-key")
    assert dead.message == (
        "step 'Kernels': key 'fast_check' is not read by the AMD template (dropped silently)"
    )
    assert dead.also == (".buildkite/test-amd.yaml:20",)


def test_the_amd_pipeline_names_a_job_by_its_pool_and_needs_no_group(ci):
    amd_tree(ci)
    assert amd_findings(ci, "unique-labels") == []  # mi325_1: Kernels, mi325_4: Kernels
    assert amd_findings(ci, "schema") == []
    ci.write(".buildkite/test-amd.yaml", AMD.replace("agent_pool: mi325_4", "agent_pool: mi325_1"))
    (twice,) = amd_findings(ci, "unique-labels")
    assert twice.message.startswith("label 'mi325_1: Kernels' is already used at")


def test_an_amd_pod_gets_exactly_its_num_gpus(ci):
    amd_tree(ci)
    (finding,) = amd_findings(ci, "gpu-count")
    assert finding.message == "step 'Kernels' gets 2 GPU(s) but a command needs 4 (TP=4)"
    assert finding.hint == "set `num_gpus: 4` or run it with fewer ranks"


def test_a_test_only_the_amd_pipeline_runs_is_not_orphaned(ci):
    amd_tree(ci).write("tests/kernels/test_b.py", "def test_b():\n    pass\n")
    assert [f.path for f in found(ci, "orphaned-test", AUGUST)] == ["tests/kernels/test_b.py"]
    ci.write(
        ".buildkite/test-amd.yaml", AMD + "- label: B\n  commands: [pytest kernels/test_b.py]\n"
    )
    assert found(ci, "orphaned-test", AUGUST) == []


def test_a_mirror_adds_its_entries_to_its_steps(ci):
    ci.write("tests/test_a.py").write("tests/test_b.py")
    ci.area(
        """\
        group: g
        steps:
          - label: one
            commands: [pytest -v tests/test_a.py tests/test_b.py]
            source_file_dependencies: [tests/test_a.py, tests/test_b.py]
            mirror:
              amd:
                device: mi325_1
                source_file_dependencies: [tests/test_a.py]
        """
    )
    assert found(ci, "uncovered", AUGUST) == []  # test_b.py: the step's own entry holds


def test_two_steps_with_a_later_key_are_one_finding_and_one_more(ci):
    ci.area(TIMEOUTS)
    (finding,) = found(ci, "dead-key", APRIL)
    assert finding.also == ("1 more step(s) in 1 file(s)",)


def test_a_later_keys_finding_names_the_date_to_wait_for_and_one_step_folds_nothing(ci):
    ci.area(TIMEOUTS.split("  - label: two")[0])
    (finding,) = found(ci, "dead-key", APRIL)
    assert finding.hint == "do not rely on it before 2026-07-10"
    assert finding.also == ()


def test_a_substring_era_stale_entry_is_found_at_its_line_and_folded_across_steps(ci):
    ci.write("tests/test_a.py", "def test_a():\n    pass\n").area(SHARED_ENTRY)
    (finding,) = found(ci, "stale-dependency", APRIL)
    assert finding.line == 5
    assert finding.hint == "fix the path or remove the entry"
    assert finding.also == (".buildkite/test_areas/area.yaml:8",)


@pytest.mark.parametrize("entry", ["./tests/gone.py", "tests/unit/test_a"])
def test_one_misspelt_entry_in_two_steps_is_one_finding(ci, entry):
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    ci.area(
        SHARED_ENTRY.replace("vllm/gone/", entry).replace("tests/test_a.py", "tests/unit/test_a.py")
    )
    (finding,) = found(ci, "stale-dependency", AUGUST)
    assert finding.also == (".buildkite/test_areas/area.yaml:8",)


def test_an_entry_ending_in_x_is_judged_as_written(ci):
    (finding,) = substring_tree(ci, "vllm/gone_X").findings("stale-dependency")
    assert finding.message == "step 'unit': entry 'vllm/gone_X' names nothing in the tree"


def test_an_entry_without_its_suffix_starting_with_x_is_found_with_its_file(ci):
    substring_tree(ci, "Xlib/run").write("Xlib/run.sh")
    (finding,) = ci.findings("stale-dependency")
    assert finding.hint == "write `Xlib/run.sh`"


def test_a_run_all_entry_does_not_stop_the_entries_after_it(ci):
    ci.write("tests/unit/test_a.py").write(".buildkite/ci_config.yaml", RUN_ALL)
    ci.write(
        ".buildkite/test_areas/area.yaml",
        SUBSTRING_STEP.format(entry="csrc/gone/") + "      - 'vllm/gone/'\n",
    )
    (finding,) = found(ci, "stale-dependency", AUGUST)
    assert "'vllm/gone/' names nothing" in finding.message


def test_a_file_next_to_a_listed_folder_of_its_name_is_still_uncovered(ci):
    ci.write("tests/unit/test_x.py").write("tests/unit.py", "def test_u():\n    pass\n")
    ci.area(
        SUBSTRING_STEP.format(entry="tests/unit/").replace("tests/unit/test_a.py", "tests/unit.py")
    )
    (finding,) = found(ci, "uncovered", AUGUST)
    assert "runs tests/unit.py" in finding.message


def test_a_file_matched_by_an_anchored_run_all_pattern_is_covered(ci):
    ci.write("scripts/run.sh").write(
        ".buildkite/ci_config.yaml",
        "job_dirs: [.buildkite/test_areas]\nrun_all_patterns: ['scripts/run.sh$']\n",
    )
    ci.write(
        ".buildkite/test_areas/area.yaml",
        "group: g\nsteps:\n- label: s\n  commands: [bash scripts/run.sh]\n"
        "  source_file_dependencies: [vllm/]\n",
    )
    assert found(ci, "uncovered", AUGUST) == []


def test_an_amd_file_with_a_key_no_pipeline_reads_at_its_top_is_a_schema_finding(ci):
    amd_tree(ci).write(".buildkite/test-amd.yaml", "stepz: 1\n" + AMD)
    (finding,) = amd_findings(ci, "schema")
    assert "'stepz' was unexpected" in finding.message


def test_amd_jobs_without_a_pool_are_named_by_their_label(ci):
    amd_tree(ci).write(
        ".buildkite/test-amd.yaml",
        "steps:\n- label: K\n  commands: [x]\n- label: K\n  commands: [y]\n",
    )
    (twice,) = amd_findings(ci, "unique-labels")
    assert twice.message.startswith("label ': K' is already used at")


def test_unfolded_each_place_of_a_cause_is_a_finding_of_its_own(ci):
    ci.write("tests/test_a.py", "def test_a():\n    pass\n").area(SHARED_ENTRY)
    every = lint(ci.root, select={"stale-dependency"}, fold_causes=False)
    assert [(f.line, f.also) for f in every] == [(5, ()), (8, ()), (8, ())]
    assert sum("[mirror amd]" in f.message for f in every) == 1


def test_a_substring_era_stale_entry_after_another_is_found_at_its_own_line(ci):
    ci.write("tests/unit/test_a.py", "def test_a():\n    pass\n")
    ci.area(SUBSTRING_STEP.format(entry="tests/unit/test_a") + "      - 'vllm/gone/'\n")
    (finding,) = found(ci, "stale-dependency", APRIL)
    assert finding.line == ci.line_of("'vllm/gone/'")


def test_an_entry_written_from_here_ending_in_x_is_shown_whole(ci):
    (finding,) = substring_tree(ci, "./vllm/X").findings("stale-dependency")
    assert finding.hint == "write `vllm/X`"


@pytest.mark.parametrize(
    ("raw", "sees"),
    [
        ({"device": "h100", "num_devices": 2}, "exactly 2"),
        ({"num_devices": 2}, "4"),  # gpu_4_queue passes its whole runner
        ({"device": "h200_18gb"}, "1"),
        ({"device": "cpu-small"}, "0"),
        (
            {"device": "intel_gpu", "agent_tags": {"label": "production", "gpu": "2+"}},
            "at least 2 (agent tag gpu: 2+)",
        ),
        (
            {"device": "intel_gpu", "agent_tags": {"gpu": "many"}},
            "its whole runner (size not written in the tree)",
        ),
        ({"device": "b200"}, "its whole runner (size not written in the tree)"),
    ],
)
def test_what_a_job_sees_is_said_in_words(raw, sees):
    assert conventions.generator().sees(raw) == sees


def test_agent_tags_promise_gpus_only_where_the_generator_reads_them():
    raw = {"device": "intel_gpu", "agent_tags": {"gpu": "4+"}}
    assert conventions.generator().gpu_floor(raw) == 4
    assert conventions.generator("2026-05-01").gpu_floor(raw) is None  # read from 2026-06-15


def test_a_substring_era_entry_matching_the_middle_of_a_path_is_not_stale(ci):
    substring_tree(ci, "unit/test_a")  # inside tests/unit/test_a.py, not at its start
    assert found(ci, "stale-dependency", APRIL) == []


def test_the_amd_pipeline_finds_an_entry_that_only_the_middle_of_a_path_holds(ci):
    amd_tree(ci)
    amd = (ci.root / ".buildkite/test-amd.yaml").read_text()
    (ci.root / ".buildkite/test-amd.yaml").write_text(amd.replace("vllm/gone/", "kernels/test_a"))
    (stale,) = amd_findings(ci, "stale-dependency")
    assert stale.message.startswith("step 'Kernels': entry 'kernels/test_a' is part of no path")


@pytest.mark.parametrize(
    ("include", "exclude", "path", "runs"),
    [
        (["csrc/", "setup.py"], [], "csrc/ops.cu", True),
        (["csrc/", "setup.py"], [], "vllm/a.py", False),
        (["csrc/"], ["csrc/docs/"], "csrc/docs/a.md", False),
        (["[unclosed", "docker/"], [], "docker/Dockerfile", True),  # no expression: skipped
        (["(?i)DOCKER/"], [], "docker/Dockerfile", True),  # inline flags: one by one
        (["a/", "(?i)DOCKER/"], [], "vllm/a.py", False),
        ([], [], "csrc/ops.cu", False),
    ],
)
def test_a_change_runs_everything_where_an_include_and_no_exclude_pattern_match(
    include, exclude, path, runs
):
    assert conventions.runs_everything(path, (include, exclude)) is runs
