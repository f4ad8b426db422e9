"""``pytest file.py::name`` where ``name`` is no test in that file, and ``--deselect``
values that deselect nothing.

pytest then reports "no tests ran" or errors, and a step that greps its output or
allows exit code 5 passes with nothing run.  Names are read with ``ast``: module-level
``test*`` functions (or names bound to something), ``Test*`` classes and their
``test*`` methods; ``[params]`` ids are stripped.

pytest leaves out each test whose id starts with a ``--deselect`` value, silently: a
value naming no file, or a test its file lacks, leaves everything in.  Ids are written
from pytest's rootdir (vLLM's: the checkout's root); a value is judged wrong only when
it fits neither that nor the folder it was named in.
"""

from __future__ import annotations

import ast
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.sources import python_tree

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.commands import CommandInfo
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "missing-test"


# statements whose blocks bind names at the level they are in (a test defined under an
# ``if`` or a ``try`` at module level is a module-level test)
BLOCKS = (ast.If, ast.Try, ast.TryStar, ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        yield node
        if isinstance(node, BLOCKS):
            for block in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body)


def _bound(node: ast.stmt) -> list[str]:
    """The names a statement binds in its scope ("*" for a star import: any name)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [alias.asname or alias.name.split(".")[0] for alias in node.names]
    return []


def _names(path: Path) -> dict[str, set[str]] | None:
    """{module-level name: the names its class body binds ("*": not judged)}; None when the
    file does not parse or a star import may bind any name."""
    tree = python_tree(path)
    if tree is None:
        return None
    names: dict[str, set[str]] = {}
    for node in _statements(tree.body):
        for name in _bound(node):
            if isinstance(node, ast.ClassDef):
                inner = {n for item in _statements(node.body) for n in _bound(item)}
                names[name] = inner | ({"*"} if node.bases else set())  # inherited: not judged
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names[name] = set()
            else:  # an assignment or an import: what it holds is not read
                names[name] = {"*"}
    return None if "*" in names else names


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


def deselects_nothing(ctx: Pipeline, value: str, folder: str | None) -> str:
    """Why ``--deselect value`` (named in ``folder``) deselects nothing, or ''."""
    if any(mark in value for mark in ("$", "*", "{")):
        return ""  # the shell decides
    # from the root, then the folder it was named in (None: outside the workspace: a base
    # naming no folder finds nothing)
    bases = dict.fromkeys(("", folder or ""))  # pragma: no mutate (equivalent: finds nothing)
    file, marks, selector = value.partition("::")
    if not marks:  # a prefix of test ids: a path, or where one starts
        for base in bases:
            if ctx.has_path_starting(posixpath.join(base, value)):
                return ""
        return "no test id starts with it: no path in the tree does"
    for base in bases:
        path = ctx.root / posixpath.normpath(posixpath.join(base, file))
        if path.is_file():
            lacking = missing(path, selector) if file.endswith(".py") else ""
            return f"{file} has no test {lacking}" if lacking else ""
    return f"{file} is no file" if file else "it names no file"


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        for info in step.parsed():
            for value, folder in info.deselected:
                why = deselects_nothing(ctx, value, folder)
                if why:
                    findings.append(
                        step.finding(
                            ("commands", info.index),
                            RULE,
                            f"step {step.label!r} deselects {value}, but {why} (nothing is "
                            "deselected)",
                            "write the test id from the checkout's root: path.py::test[params]",
                            word=value,
                        )
                    )
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
                            word=written,
                        )
                    )
    return findings
