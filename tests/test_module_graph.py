"""The kit's own import graph: no cycles, and the hotfix plugin depends on vLLM only.

Read from the sources (every ``import`` statement, also those inside
functions, since a lazy import is a dependency too).  ``from package import
name`` counts as importing the submodule when ``name`` is one; a module's
implicit import of its own parent package is not an edge, nor is an import under
``if TYPE_CHECKING:`` (it never runs: an annotation's name, as import-linter's
``exclude_type_checking_imports`` counts it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx  # a dependency of torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vllm_ep_kit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kit_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the statements under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for statement in node.body:
                inside.update(id(sub) for sub in ast.walk(statement))
    return inside


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kit modules ``path`` imports anywhere in its text, type-only imports aside."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    type_only = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> nx.DiGraph:
    modules = kit_modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in imports_of(path, modules):
            if target != name and not name.startswith(target + "."):  # own parent package
                graph.add_edge(name, target)
    return graph


def test_the_graph_sees_lazy_imports():
    """The reader must find an import made inside a function (check's rank function)."""
    graph = import_graph()
    assert graph.has_edge("vllm_ep_kit.commands.check", "vllm_ep_kit.backends.exchange")
    assert graph.has_edge("vllm_ep_kit.backends.agrs", "vllm_ep_kit.backends.registry")


def test_type_only_imports_are_not_edges():
    """spec names Transport and transport names Backend, for annotations only."""
    graph = import_graph()
    assert not graph.has_edge("vllm_ep_kit.backends.transport", "vllm_ep_kit.backends.spec")
    assert graph.has_edge("vllm_ep_kit.backends.transport", "vllm_ep_kit.reference.moe")


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def test_patches_import_vllm_and_their_own_package_only():
    graph = import_graph()
    patches = [n for n in graph if n == f"{PACKAGE}.patches" or n.startswith(f"{PACKAGE}.patches.")]
    outside = sorted(
        (n, t)
        for n in patches
        for t in graph.successors(n)
        if not (t == f"{PACKAGE}.patches" or t.startswith(f"{PACKAGE}.patches."))
    )
    assert patches and outside == [], f"patches importing the rest of the kit: {outside}"
