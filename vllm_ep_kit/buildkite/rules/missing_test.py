"""``pytest file.py::name`` where ``name`` is no test in that file.

pytest then reports "no tests ran" or errors, and a step that greps its output or
allows exit code 5 passes with nothing run.  Names are read with ``ast``: module-level
``test*`` functions (or names bound to something), ``Test*`` classes and their
``test*`` methods; ``[params]`` ids are stripped.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_ep_kit.buildkite.sources import python_tree

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vllm_ep_kit.buildkite.area import Finding
    from vllm_ep_kit.buildkite.commands import CommandInfo
    from vllm_ep_kit.buildkite.pipeline import Pipeline

RULE = "missing-test"


def _names(path: Path) -> dict[str, set[str]] | None:
    """{top-level name: its test methods}; None when the file does not parse."""
    tree = python_tree(path)
    if tree is None:
        return None
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
            names[node.name] |= {"*"} if node.bases else set()  # inherited tests: not judged
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({t.id: {"*"} for t in targets if isinstance(t, ast.Name)})
    return names


def missing(path: Path, selector: str) -> str:
    """What of ``selector`` (``name`` or ``Class::method``) the file lacks, or ''."""
    names = _names(path)
    if names is None:
        return ""
    parts = [part.partition("[")[0] for part in selector.split("::") if part]
    if not parts or parts[0] not in names:
        return parts[0] if parts else ""
    if len(parts) > 1 and "*" not in names[parts[0]] and parts[1] not in names[parts[0]]:
        return f"{parts[0]}::{parts[1]}"
    return ""


def _named(i: CommandInfo) -> Iterator[tuple[str, str, str]]:
    """(as written, as a repository path, ``::`` selector) of each file command ``i`` names;
    commands.py fills the three lists together, so ``strict`` never decides."""
    lists = (i.files, i.repo_files, i.selectors)
    return zip(*lists, strict=True)  # pragma: no mutate (equivalent: same length)


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        for info in step.parsed():
            for written, repo, selector in _named(info):
                if not selector or not repo.endswith(".py"):
                    continue  # "" (outside the workspace) is no .py file either
                path = ctx.root / repo
                if not path.is_file():
                    continue  # path-exists reports it
                lacking = missing(path, selector)
                if lacking:
                    findings.append(
                        step.finding(
                            ("commands", info.index),
                            RULE,
                            f"step {step.label!r} runs {written}::{selector}, but {repo} has no "
                            f"test {lacking}",
                            f"fix the name, or run {written} whole",
                        )
                    )
    return findings
