"""The package's layers hold, and the contracts that say so can fail.

``pyproject.toml``'s ``[tool.importlinter]`` states them: cli over commands over lint and
backends (independent of each other) over harness over patches over reference, every
entry of the package in a layer, and no two siblings at any depth importing each other.
Each plant goes into a copy of the package, so the working tree is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import networkx as nx  # a dependency of torch
import pytest

from tests.test_module_graph import import_graph

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vllm_ep_kit"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over ``tree``'s copy of the package, with the project's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )


def copy_of_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "vllm_ep_kit", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def plant(tree: Path, module: str, line: str) -> None:
    path = tree / "vllm_ep_kit" / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")


def broken_contracts(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {
        contract["id"]
        for contract in CONTRACTS["contracts"]
        if f"{contract['name']} BROKEN" in result.stdout
    }


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in CONTRACTS["contracts"]:
        assert f"{contract['name']} KEPT" in result.stdout, result.stdout


@pytest.fixture
def tree(tmp_path):
    tree = copy_of_package(tmp_path)
    clean = lint_imports(tree)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # the copy alone is clean
    return tree


PLANTS = {
    # the oracle reaching up into the harness (a lazy import is a dependency too); the
    # harness reads the reference, so the two packages now also import each other
    "upward": (
        "reference/layout.py",
        "from vllm_ep_kit.harness import runner  # noqa",
        {"layers", "acyclic"},
    ),
    # the linter and the backends are one layer, independent of each other
    "sideways": ("lint/area.py", "from vllm_ep_kit import backends  # noqa", {"layers"}),
    # the top layer taken up by one below it
    "cli-from-below": (
        "commands/doctor.py",
        "from vllm_ep_kit import cli  # noqa",
        {"layers", "acyclic"},
    ),
    # two sibling modules of one package importing each other (moe already reads formats)
    "cycle": (
        "reference/formats.py",
        "from vllm_ep_kit.reference import moe  # noqa",
        {"acyclic"},
    ),
}


@pytest.mark.parametrize("name", PLANTS)
def test_a_planted_import_breaks_its_contract(tree, name):
    module, line, contracts = PLANTS[name]
    plant(tree, module, line)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken_contracts(result) == contracts, result.stdout
    importer = module.removesuffix(".py").split("/")[-1]
    assert f".{importer}" in result.stdout, result.stdout  # the report names the importer


def test_a_new_entry_outside_every_layer_breaks_the_layers(tree):
    (tree / "vllm_ep_kit" / "stray.py").write_text('"""Belongs to no layer."""\n')
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert broken_contracts(result) == {"layers"}, result.stdout
    assert "vllm_ep_kit.stray" in result.stdout, result.stdout


def readme_map() -> set[str]:
    """The entries the README's map names: the lines just under ``vllm_ep_kit/``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("vllm_ep_kit/"))
    named = set()
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        if not line.startswith("   "):  # a name, not a continuation line
            named.add(line.split()[0].rstrip("/"))
    return named


def test_the_package_has_at_most_nine_entries_and_the_readme_names_each():
    entries = {p.name.rstrip("/") for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert len(entries) <= 9, sorted(entries)
    assert readme_map() == entries


def entry_point_modules() -> set[str]:
    """The modules pyproject's scripts and entry points name (cli, the plugins)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = list(project["scripts"].values())
    for group in project["entry-points"].values():
        targets.extend(group.values())
    return {target.split(":")[0] for target in targets}


def test_every_module_of_the_wheel_serves_a_command_or_a_plugin():
    """What only tests run lives under tests/: each module of the package is reached from
    an entry point, by an import or by name (the pool's fork-server preload), or is a
    member its package loads by scanning itself (the built-in backends, the lint rules,
    the hotfix modules)."""
    from vllm_ep_kit import backends, patches
    from vllm_ep_kit.harness import pool
    from vllm_ep_kit.lint.rules import ALL_RULES

    graph = import_graph()
    roots = entry_point_modules() | set(pool.PRELOAD)
    roots |= {f"{backends.__name__}.{name}" for name in backends.BUILT_IN}
    roots |= {rule.__name__ for rule in ALL_RULES}
    roots |= {type(patch).__module__ for patch in patches.all_patches()}
    assert roots <= set(graph.nodes), roots - set(graph.nodes)
    reached = set(roots).union(*(nx.descendants(graph, root) for root in roots))
    parents = {name.rsplit(".", 1)[0] for name in reached if "." in name}
    stray = sorted(set(graph.nodes) - reached - {p for p in parents if p in graph.nodes})
    # a package whose modules are reached is in use (its __init__ is imported with them)
    stray = [name for name in stray if not any(r.startswith(name + ".") for r in reached)]
    assert not stray, f"modules no command or plugin uses (move them under tests/): {stray}"
