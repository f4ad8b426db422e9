"""``patches export`` on real vLLM sources: each fix a release needs, written as its change.

A copy of each fetched affected release (0.19.1 in ``make test``) gets exactly the fixes
that release needs (``releases.py``, the probed table), which then verify; a second
export changes nothing; ``--format patch`` changes nothing and its diffs apply to a
pristine copy; a file changed beyond recognition or a folder without vLLM is refused
hotfix by hotfix with nothing half-written.  The installed vLLM's sources get only what
that release still lacks.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.patches.releases import has_bug
from vllm_ep_kit import cli
from vllm_ep_kit.commands import exit_codes, patches_export
from vllm_ep_kit.patches import all_patches

pytestmark = [pytest.mark.vllm, pytest.mark.flashinfer]

SOURCES_ONLY = shutil.ignore_patterns("*.so", "*.so.*", "*.cu", "*.cuh", "__pycache__", "*.pyc")
COMMUNICATOR = "vllm/distributed/device_communicators/cuda_communicator.py"


def copy_release(affected_vllm_path, target: Path) -> Path:
    """A writable copy of a fetched release: its sources, its deps linked beside them."""
    src, deps = affected_vllm_path
    shutil.copytree(src, target / "src", ignore=SOURCES_ONLY)
    (target / "deps").symlink_to(deps)
    return target


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.py"))
    }


def assert_formatted_like_vllm(root: Path, report: dict) -> None:
    """The files export changed pass vLLM's formatter (ruff format, 88 columns), as the
    releases' own files do."""
    for relative in sorted({f for row in report["rows"] for f in row["files"]}):
        formatted = subprocess.run(
            [
                sys.executable,
                "-m",
                "ruff",
                "format",
                "--check",
                "--line-length",
                "88",
                "--target-version",
                "py310",
                str(root / relative),
            ],
            capture_output=True,
            text=True,
        )
        assert formatted.returncode == 0, f"{relative}: {formatted.stdout}{formatted.stderr}"


def statuses(report: dict) -> dict[str, str]:
    return {row["patch"]: row["status"] for row in report["rows"]}


@pytest.mark.affected_release
def test_export_writes_exactly_the_fixes_a_release_needs_and_they_verify(
    affected_vllm_path, affected_release, tmp_path
):
    tree = copy_release(affected_vllm_path, tmp_path / "tree")
    report = patches_export.export(tree)
    expected = {
        p.name: patches_export.WRITTEN
        if has_bug(p.name, affected_release)
        else patches_export.NOT_NEEDED
        for p in all_patches()
    }
    assert statuses(report) == expected, report["rows"]
    assert exit_codes.patches_export(report) == exit_codes.PASSED
    for row in report["rows"]:
        if row["status"] == patches_export.WRITTEN:
            assert row["why"].startswith("fixed; the probe now says"), row
            assert row["removable"], f"{row['patch']} says nothing of when it can go"

    assert_formatted_like_vllm(tree / "src", report)

    # a second export writes nothing, and --check finds nothing left to fix
    written = digest(tree / "src")
    again = patches_export.export(tree)
    assert set(statuses(again).values()) == {patches_export.NOT_NEEDED}
    assert digest(tree / "src") == written
    checked = patches_export.export(tree, check=True)
    assert exit_codes.patches_export(checked) == exit_codes.PASSED


@pytest.mark.affected_release
def test_check_reports_the_needed_fixes_and_changes_nothing(
    affected_vllm_path, affected_release, tmp_path
):
    tree = copy_release(affected_vllm_path, tmp_path / "tree")
    before = digest(tree / "src")
    report = patches_export.export(tree, check=True)
    needed = {name for name, status in statuses(report).items() if status == "needed"}
    assert needed == {p.name for p in all_patches() if has_bug(p.name, affected_release)}
    assert exit_codes.patches_export(report) == (exit_codes.FAILED if needed else exit_codes.PASSED)
    assert digest(tree / "src") == before


@pytest.mark.affected_release
def test_the_patch_format_changes_nothing_and_applies_to_a_pristine_copy(
    affected_vllm_path, tmp_path, capsys
):
    tree = copy_release(affected_vllm_path, tmp_path / "tree")
    before = digest(tree / "src")
    rc = cli.main(["patches", "export", "--vllm-tree", str(tree), "--format", "patch"])
    out = capsys.readouterr().out
    assert rc == 0
    assert digest(tree / "src") == before
    assert out.startswith("# vllm-project/vllm#") and "\n--- a/vllm/" in out
    patch = tmp_path / "fixes.patch"
    patch.write_text(out)
    applied = subprocess.run(
        ["git", "apply", "--check", str(patch)], cwd=tree / "src", capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr


@pytest.mark.affected_release
def test_a_function_changed_beyond_recognition_is_refused_without_half_writes(
    affected_vllm_path, tmp_path, capsys
):
    """Every release probed lacks the asserts' messages; here one of the three asserts is
    spelled differently (the same check), so that hotfix's change does not fit: it is
    refused, and none of its three edits is written."""
    tree = copy_release(affected_vllm_path, tmp_path / "tree")
    communicator = tree / "src" / COMMUNICATOR
    mangled = communicator.read_text().replace(
        "assert input_tensor.shape[0] == sum(sizes)\n",
        "assert sum(sizes) == input_tensor.shape[0]\n",
    )
    communicator.write_text(mangled)
    rc = cli.main(["patches", "export", "--vllm-tree", str(tree)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == exit_codes.FAILED
    assert len(lines) == len(all_patches())
    refused = next(line for line in lines if line.startswith("reduce_scatterv_asserts:"))
    assert "cannot apply" in refused and "reduce_scatterv" in refused, refused
    assert communicator.read_text() == mangled  # none of its edits written


def test_a_folder_without_vllm_gets_one_line_per_hotfix(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not vLLM")
    rc = cli.main(["patches", "export", "--vllm-tree", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == exit_codes.FAILED
    assert len(lines) == len(all_patches())
    assert all("cannot apply" in line and "holds no vllm package" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_installed_release_gets_only_what_it_still_lacks(tmp_path):
    """A sources-only copy of the installed vLLM: export writes the fixes that release
    still lacks (the probed table), they verify, and nothing else is touched."""
    import vllm

    release = vllm.__version__
    tree = tmp_path / "installed"
    shutil.copytree(Path(vllm.__file__).parent, tree / "vllm", ignore=SOURCES_ONLY)
    report = patches_export.export(tree)
    assert statuses(report) == {
        p.name: patches_export.WRITTEN if has_bug(p.name, release) else patches_export.NOT_NEEDED
        for p in all_patches()
    }, report["rows"]
    assert_formatted_like_vllm(tree, report)
