"""A test file under ``tests/`` that no step runs: a PR changing it is checked by nothing.

A step runs a file when a command names it, a folder holding it (less what its
``--ignore`` options leave out) or a glob matching it, or when a script a step runs
names it; the shell scripts under ``.buildkite/`` and CI files the generator does not read
(another pipeline's) count as running what they name.  Test files are pytest's
(``test_*.py``, ``*_test.py``); ``conftest.py``, ``__init__.py``, helpers and data are
not tests.  A tree whose steps run no test under ``tests/`` at all is not judged (its
tests run elsewhere).  Folders whose every test is orphaned are reported once, at the folder's
first file, with the count.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.rules.listed_not_run import glob_runs

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "orphaned-test"
TESTS = "tests"
GLOB = re.compile(r"[*?\[]")


def is_test_file(name: str) -> bool:
    """pytest's default ``python_files``: ``test_*.py`` and ``*_test.py``."""
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def test_files(root) -> list[str]:
    """Every test file under ``tests/`` as a repository path, in walk order."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root / TESTS):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        relative = posixpath.relpath(folder.replace(os.sep, "/"), str(root).replace(os.sep, "/"))
        found.extend(f"{relative}/{name}" for name in sorted(files) if is_test_file(name))
    return found


def _ancestors(path: str) -> list[str]:
    """``path`` and every folder above it (``a/b/c.py``, ``a/b``, ``a``)."""
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


class RunIndex:
    """What the steps run, indexed so a vLLM-sized tree is judged in milliseconds."""

    def __init__(self) -> None:
        self.plain: dict[str, list[tuple[str, ...]]] = defaultdict(list)  # path -> its ignores
        self.globs: list[tuple[str, tuple[str, ...]]] = []
        self.named: set[str] = set()  # what scripts and other pipelines' files name
        self.left_out: set[str] = set()  # what a command's --ignore names: left out on purpose

    def add(self, path: str, ignored: tuple[str, ...] = ()) -> None:
        """A path a command runs ('' for one outside the checkout: nothing of the tree)."""
        if not path:
            return
        if GLOB.search(path):
            self.globs.append((path, ignored))
        else:
            self.plain[path].append(ignored)

    def runs(self, path: str) -> bool:
        def kept(ignored: tuple[str, ...]) -> bool:
            return not any(glob_runs(i, path) for i in ignored)

        for folder in _ancestors(path):
            if any(kept(ignored) for ignored in self.plain.get(folder, ())):
                return True
        return path in self.named or any(
            glob_runs(g, path) and kept(ignored) for g, ignored in self.globs
        )


def text_of(path) -> str:
    """A file's text, undecodable bytes replaced ('' when it cannot be read)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""  # pragma: no mutate (equivalent: any text without a path names nothing)


def _words(text: str, suffix: str = "py") -> set[str]:
    """Path-like words of a script or CI file (what it may run), without a leading ``./``
    or ``/``; a word built on a variable (``${GIT_ROOT}/tests/a/test_b.py``) from after it."""
    return {w.lstrip("./") for w in re.findall(r"[\w./-]+\." + suffix + r"\b", text)}


def run_index(ctx: Pipeline) -> RunIndex:
    index = RunIndex()
    scripts: set[str] = set()
    for step in ctx.steps:
        for info in step.parsed():
            ignored = tuple(info.ignored)
            index.left_out.update(ignored)
            for path in [*info.repo_files, *info.run_paths]:
                index.add(path, ignored)
                if path.endswith(".sh") or (path.endswith(".py") and not path.startswith(TESTS)):
                    scripts.add(path)
    read = {area.display for area in ctx.areas}
    others = [
        str(p.relative_to(ctx.root))
        for p in (ctx.root / ".buildkite").rglob("*")
        if p.suffix in (".yaml", ".yml", ".sh") and p.is_file()
    ]
    queue, done = sorted(scripts | {o for o in others if o not in read}), set()
    while queue:  # scripts call scripts (SCRIPT="$(dirname "$0")/run.sh"; bash "$SCRIPT")
        path = queue.pop()
        # a script named from the tests folder by a runner that starts there
        file = next((f for f in (ctx.root / path, ctx.root / TESTS / path) if f.is_file()), None)
        if file is None or file in done:
            continue
        done.add(file)
        text = text_of(file)
        folder = posixpath.dirname(str(file.relative_to(ctx.root)))
        for word in _words(text):
            for start in ("", TESTS, folder):
                index.named.add(posixpath.normpath(posixpath.join(start, word)))
        for word in _words(text, "sh"):
            for start in ("", folder):
                queue.append(posixpath.normpath(posixpath.join(start, word)))
    return index


def collects_tests(root, path: str) -> bool:
    """Whether pytest would collect a test from the file (a ``test`` function or method); a
    script named test_*.py that only runs as a program has none."""
    return re.search(r"^\s*(async\s+)?def test", text_of(root / path), re.MULTILINE) is not None


def check(ctx: Pipeline) -> list[Finding]:
    from vllm_ep_kit.lint.area import Finding

    index = run_index(ctx)
    files = test_files(ctx.root)
    if not any(index.runs(f) for f in files):
        return []  # no steps, or they run no test of tests/: the tests run elsewhere
    orphans = [
        f
        for f in files
        if not index.runs(f) and f not in index.left_out and collects_tests(ctx.root, f)
    ]
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in files:
        by_folder[posixpath.dirname(path)].append(path)
    findings, reported = [], set()
    for path in orphans:
        folder = posixpath.dirname(path)
        if folder in reported:
            continue
        siblings = by_folder[folder]
        whole = len(siblings) > 1 and all(s in orphans for s in siblings)
        if whole:
            reported.add(folder)
            message = (
                f"no step runs any of the {len(siblings)} test files of {folder}/ "
                "(a change to them is checked by nothing)"
            )
            hint = f"run `pytest {folder}/` in the step that covers its code"
        else:
            message = "no step runs this test file (a change to it is checked by nothing)"
            hint = "run it in the step that runs its neighbours, or delete it"
        findings.append(Finding(path, 1, RULE, message, hint))
    return findings
