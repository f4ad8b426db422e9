"""The import closure: what an import needs on a target, not what happened to be loaded here."""

from __future__ import annotations

from pathlib import Path

from vllm_ep_kit.commands.bundle import compatible_platforms
from vllm_ep_kit.commands.import_closure import minimal_distributions


def make_dist(site: Path, name: str, code: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal installed distribution: one module and its dist-info."""
    (site / f"{name}.py").write_text(code)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: "
        + name
        + "\nVersion: 1.0\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    (info / "RECORD").write_text(f"{name}.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def test_closure_keeps_hard_imports_and_drops_optional_and_unused(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(
        site,
        "app",
        "import core\ntry:\n    import extra\nexcept ImportError:\n    extra = None\n",
        requires=("core", "declared_only"),
    )
    make_dist(site, "core", "VALUE = 1\n")
    make_dist(site, "extra", "VALUE = 2\n")  # installed here, optional for app
    make_dist(site, "declared_only", "VALUE = 3\n")  # declared by app, never imported
    messages = []
    closure = minimal_distributions(
        ("app",), have=set(), site_paths=[str(site)], progress=messages.append
    )
    assert sorted(closure.needed) == ["app", "core"]
    assert closure.reasons["app"].startswith("app (imported at")
    assert any("declared but not imported: declared-only" in m for m in messages)


def test_have_distributions_are_not_shipped(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "app", "import core\n")
    make_dist(site, "core", "")
    closure = minimal_distributions(("app",), have={"core"}, site_paths=[str(site)])
    assert sorted(closure.needed) == ["app"]


def test_manylinux_tag_expansion():
    tags = compatible_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and tags[-1] == "any"
    assert compatible_platforms("macosx_11_0_arm64") == ["macosx_11_0_arm64", "any"]


def test_a_skipped_distribution_that_is_needed_is_an_error(tmp_path):
    import pytest

    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "app", "import core\n")
    make_dist(site, "core", "")
    with pytest.raises(RuntimeError, match=r"core is needed .* but is skipped"):
        minimal_distributions(("app",), have=set(), site_paths=[str(site)], skip={"core"})
