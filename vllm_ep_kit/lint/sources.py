"""Python files of the linted tree, parsed once per version (several rules read the same
test files: imports, test names, GPU marks)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path


def python_tree(path: Path) -> ast.Module | None:
    """The module's syntax tree; None when it cannot be read or parsed."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _parse(path, stamp)


@functools.cache
def _parse(path: Path, stamp: int) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(errors="replace"), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return None
