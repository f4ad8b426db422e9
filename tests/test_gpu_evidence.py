"""The GPU evidence page is what the runs' data give, and malformed data is refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_evidence  # noqa: E402 (a script, imported from its folder)


def test_the_committed_page_is_what_the_runs_give():
    assert gpu_evidence.main(["--check"]) == 0
    for run in gpu_evidence.runs():  # each has its record and at least one test case
        assert run.results and run.env["gpu_count"] >= 1


@pytest.fixture
def one_run(tmp_path):
    """A copy of the first committed run, as the only run of a folder."""
    source = sorted(p for p in gpu_evidence.RUNS.iterdir() if p.is_dir())[0]
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    return copy


def test_a_run_renders_its_hardware_counts_and_each_test_that_ran(one_run):
    (run,) = gpu_evidence.runs(one_run.parent)
    page = gpu_evidence.render([run])
    ran = sorted(t for t, r in run.results.items() if r != "skipped")
    assert ran, "the fixture run ran nothing"
    assert f"| `{ran[0]}` | {run.hardware} | {run.results[ran[0]]} |" in page
    skipped = [t for t, r in run.results.items() if r == "skipped"]
    assert all(f"`{t}`" not in page for t in skipped)


def test_a_later_run_replaces_an_earlier_result_on_the_same_hardware(one_run):
    later = one_run.parent / "zz-later"
    shutil.copytree(one_run, later)
    env = json.loads((later / "env.json").read_text())
    env["date"], env["commit"] = "2099-01-01", "abcdef1"
    (later / "env.json").write_text(json.dumps(env))
    page = gpu_evidence.render(gpu_evidence.runs(one_run.parent))
    table = page.split("## Tests that ran")[1]
    assert "`abcdef1`" in table and "2099-01-01" in table
    assert str(json.loads((one_run / "env.json").read_text())["commit"])[:9] not in table


def test_of_two_runs_of_one_day_the_one_started_later_is_the_latest(one_run):
    """Folder names do not order runs of one day: the reports' start times do."""
    junit = (one_run / "junit.xml").read_text()
    stamp = gpu_evidence.load(one_run).started
    assert stamp, "the fixture run's report has no timestamp"
    later = one_run.parent / "0-started-later"  # sorts first by name
    shutil.copytree(one_run, later)
    env = json.loads((later / "env.json").read_text())
    env["commit"] = "abcdef1"
    (later / "env.json").write_text(json.dumps(env))
    (later / "junit.xml").write_text(junit.replace(stamp, "2999" + stamp[4:]))
    assert [run.name for run in gpu_evidence.runs(one_run.parent)] == [one_run.name, later.name]
    table = gpu_evidence.render(gpu_evidence.runs(one_run.parent)).split("## Tests that ran")[1]
    assert "`abcdef1`" in table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda env: env.pop("driver"), "'driver' is a required property"),
        (lambda env: env.update(commit="HEAD"), "does not match"),
        (lambda env: env.update(gpu_count=0), "less than the minimum"),
        (lambda env: env.update(notes="free text"), "Additional properties"),
    ],
    ids=["no-driver", "not-a-commit", "no-gpus", "an-unknown-key"],
)
def test_a_malformed_record_is_refused_naming_its_file(one_run, change, message):
    env = json.loads((one_run / "env.json").read_text())
    change(env)
    (one_run / "env.json").write_text(json.dumps(env))
    with pytest.raises(ValueError, match=message) as refused:
        gpu_evidence.runs(one_run.parent)
    assert "env.json" in str(refused.value)


def test_a_run_without_its_report_or_with_an_empty_one_is_refused(one_run):
    report = one_run / "junit.xml"
    report.write_text('<testsuites><testsuite name="pytest"/></testsuites>')
    with pytest.raises(ValueError, match=r"junit\.xml: no test cases"):
        gpu_evidence.runs(one_run.parent)
    report.unlink()
    with pytest.raises(ValueError, match=r"junit\.xml: missing"):
        gpu_evidence.runs(one_run.parent)
