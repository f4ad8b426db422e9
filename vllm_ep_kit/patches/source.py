"""A hotfix as the change it stands for in vLLM's own sources: edits of named functions.

The plugin fixes a running vLLM; a maintainer backporting to a release branch, a
distributor or an operator building vLLM from source needs the same fix as a change to
the files.  Each hotfix states its change as :class:`SourceEdit` s: in one function of
one file, a piece of text becomes another, written in vLLM's style.  :func:`apply`
makes them on a file's text, and refuses (:class:`CannotApply`, one line) where the
function or the text is not what the hotfix knows, so nothing is changed half-way.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


class CannotApply(ValueError):
    """The tree's code is not what the edit was written for (one line: what and where)."""


@dataclass(frozen=True)
class SourceEdit:
    """In the first of ``functions`` ("Class.method" or "function") that the first of
    ``paths`` the tree has (relative to the folder holding the ``vllm`` package) defines,
    each of the ``count`` occurrences of the first of ``old`` it holds becomes ``new`` (or,
    where ``new`` is a tuple, its entry of the same place).  Alternatives are the same code
    as different releases keep or spell it."""

    paths: tuple[str, ...]
    functions: tuple[str, ...]
    old: tuple[str, ...]
    new: str | tuple[str, ...]
    count: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.new, tuple) and len(self.new) != len(self.old):
            raise ValueError(f"{self.functions[0]}: {len(self.old)} old texts, {len(self.new)} new")

    def new_for(self, old: str) -> str:
        """The text that replaces ``old`` (one of :attr:`old`)."""
        return self.new[self.old.index(old)] if isinstance(self.new, tuple) else self.new

    def path_in(self, root: Path) -> Path:
        """The file of ``root`` this edit changes; CannotApply if it has none of them."""
        for relative in self.paths:
            if (root / relative).is_file():
                return root / relative
        raise CannotApply(f"the tree has none of {', '.join(self.paths)}")


def function_span(text: str, dotted: str, where: str) -> tuple[int, int]:
    """The character span of the definition ``dotted`` in the module ``text``."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise CannotApply(f"{where} does not parse ({exc.msg}, line {exc.lineno})") from exc
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in dotted.split("."):
        node = next(
            (
                n
                for n in body
                if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and n.name == part
            ),
            None,
        )
        if node is None:
            raise CannotApply(f"{where} has no {dotted}")
        body = node.body
    assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    lines = text.splitlines(keepends=True)
    start = sum(len(line) for line in lines[: node.lineno - 1])
    end = sum(len(line) for line in lines[: node.end_lineno])
    return start, end


def apply(text: str, edit: SourceEdit, where: str) -> str:
    """``text`` with ``edit`` made; CannotApply where the function or the text differs."""
    spans = []
    for function in edit.functions:
        try:
            spans.append((function, function_span(text, function, where)))
        except CannotApply:
            continue
    if not spans:
        raise CannotApply(f"{where} defines none of {', '.join(edit.functions)}")
    function, (start, end) = spans[0]
    span = text[start:end]
    old = next((o for o in edit.old if o in span), edit.old[0])
    found = span.count(old)
    if found != edit.count:
        first = old.strip().splitlines()[0]
        raise CannotApply(
            f"{where}: {function} holds {found} of `{first}`, the fix expects {edit.count}"
        )
    changed = text[:start] + span.replace(old, edit.new_for(old)) + text[end:]
    try:
        ast.parse(changed)
    except SyntaxError as exc:  # the edit's own text is wrong for this code
        raise CannotApply(f"{where}: the edit of {function} does not parse") from exc
    return changed
