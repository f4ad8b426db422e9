"""A non-optional step's ``source_file_dependencies`` cover the test code it runs.

Buildkite runs a step only when a listed path changes; a test whose helper
module is not listed does not run when that helper changes.  The import
closure of each test file (plus the conftest.py files pytest loads for it) is
read with ``ast``, and tests that import vLLM must also depend on the vLLM
pin, ``requirements/common.txt`` (a vLLM upgrade must rerun them).  For a
project testing against an installed vLLM (like this kit); not in vLLM's own
tree, whose steps list parts of ``vllm/`` and shared test helpers on purpose
(``uncovered`` checks the files its steps name).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.rules.stale_dependency import meant
from vllm_ep_kit.lint.sources import python_tree

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "dependencies"
VLLM_PIN = "requirements/common.txt"


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(root: Path, path: Path) -> tuple[AbstractSet[Path], bool]:
    """Repo files imported by ``path``, and whether it imports vllm (read once per version
    of the file: the import graph of a tree is built once per run, not once per step)."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return set(), False
    return _imports_of(root, path, stamp)


@functools.cache
def _imports_of(root: Path, path: Path, stamp: int) -> tuple[frozenset[Path], bool]:
    tree = python_tree(path)
    if tree is None:
        return frozenset(), False
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found, uses_vllm = set(), False
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts if p)
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "vllm" or name.startswith("vllm."):
                uses_vllm = True
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parts = name.split(".") if name else []
            for depth in range(1, len(parts)):
                init = root.joinpath(*parts[:depth], "__init__.py")
                if init.is_file():
                    found.add(init)
            target = _module_file(root, name) if name else None
            if target is not None:
                found.add(target)
    return frozenset(found), uses_vllm


def closure(root: Path, start: list[Path]) -> tuple[set[Path], bool]:
    todo, seen, uses_vllm = list(start), set(), False
    for test in start:  # conftest.py files pytest loads on the way to the test
        for parent in test.parents:
            if parent == root.parent:
                break
            if (parent / "conftest.py").is_file():
                todo.append(parent / "conftest.py")
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        found, vllm_here = _imports(root, path)
        uses_vllm |= vllm_here
        todo.extend(found - seen)
    return seen, uses_vllm


def _test_files(root: Path, paths: list[str]) -> list[Path]:
    files = []
    for path in paths:
        full = root / path
        if full.is_dir():
            files.extend(sorted(full.rglob("test_*.py")))
        elif full.suffix == ".py" and full.is_file():
            files.append(full)
    return files


def check(ctx: Pipeline) -> list[Finding]:
    findings: list[Finding] = []
    if ctx.vllm_tree:
        return findings  # vLLM lists parts of its tree on purpose; see uncovered.py there
    for step in ctx.steps:
        if step.optional:
            continue  # run only when asked for: its dependencies are never consulted
        runs = [p for info in step.parsed() for p in info.repo_files if p]
        tests = _test_files(ctx.root, runs)
        scripts = [ctx.root / p for p in runs if p.endswith(".sh") and (ctx.root / p).is_file()]
        if not tests and not scripts:
            continue
        deps = step.dependencies
        label = step.label
        if not deps:
            findings.append(
                step.finding(
                    (),
                    RULE,
                    f"step {label!r} declares no source_file_dependencies",
                    "list the tests, helpers and scripts it runs",
                )
            )
            continue
        files, uses_vllm = closure(ctx.root, tests)
        needed = {str(f.relative_to(ctx.root)) for f in files | set(scripts)}
        if uses_vllm:
            needed.add(VLLM_PIN)
        misspelt = {meant(ctx.root, entry) for entry in deps}  # stale-dependency's finding
        missing = sorted(
            rel for rel in needed if not step.generator.covered(rel, deps) and rel not in misspelt
        )
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            suggest = (
                missing
                if len(missing) <= 3
                else sorted({str(Path(m).parent) + "/" for m in missing})
            )
            findings.append(
                step.finding(
                    ("source_file_dependencies",),
                    RULE,
                    f"step {label!r} runs code not in its source_file_dependencies: {shown}",
                    "add " + ", ".join(suggest[:5]),
                )
            )
    return findings
