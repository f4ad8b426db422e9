"""Which tests reach vLLM, read from their source: the ``vllm`` marker must say so.

``make test``'s second leg runs ``-m vllm`` against the second tested vLLM release, so
the marker is the one list of tests that depend on the vLLM release.  A test reaches
vLLM when its function, its decorators (a parametrize list of rank functions), or a
module-level function or class of its module that it names, directly or through
others, imports ``vllm``.  ``tests/conftest.py`` fails the collection when such a test
is not marked.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path


def _imports_vllm(node: ast.AST) -> int | None:
    """The line of the first ``import vllm...`` / ``from vllm... import`` inside ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            if any(a.name == "vllm" or a.name.startswith("vllm.") for a in sub.names):
                return sub.lineno
        elif (
            isinstance(sub, ast.ImportFrom)
            and sub.level == 0
            and sub.module
            and (sub.module == "vllm" or sub.module.startswith("vllm."))
        ):
            return sub.lineno
    return None


def _names(node: ast.AST) -> set[str]:
    return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)}


@functools.cache
def vllm_reach(path: str, mtime_ns: int) -> dict[str, tuple[int, str]]:
    """For each module-level name of the file that reaches a vLLM import: (line, via)."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    defs: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defs[target.id] = node
    reach: dict[str, tuple[int, str]] = {}
    for name, node in defs.items():
        line = _imports_vllm(node)
        if line is not None:
            reach[name] = (line, name)
    changed = True
    while changed:  # through the module's own functions, to a fixed point
        changed = False
        for name, node in defs.items():
            if name in reach:
                continue
            for used in sorted(_names(node) & reach.keys()):
                reach[name] = reach[used]
                changed = True
                break
    return reach


def unmarked_vllm_tests(items: list) -> list[str]:
    """One line per collected test that reaches vLLM without the ``vllm`` marker."""
    problems = []
    for item in items:
        function = getattr(item, "function", None)
        module = getattr(item, "module", None)
        if function is None or module is None or not getattr(module, "__file__", None):
            continue
        if item.get_closest_marker("vllm") is not None:
            continue
        path = Path(module.__file__)
        reach = vllm_reach(str(path), path.stat().st_mtime_ns)
        hit = reach.get(function.__name__)
        if hit is None:
            continue
        line, via = hit
        problems.append(
            f"{item.nodeid}: reaches `import vllm` ({path.name}:{line}, in {via}) without "
            "@pytest.mark.vllm; mark it so the second vLLM release's leg (-m vllm) runs it"
        )
    return problems
