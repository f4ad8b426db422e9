"""A tiny repository per test: the rule's own tests write the few files a case needs and
lint them, so a rule's tests run in milliseconds (the whole-tree tests in
``tests/buildkite/test_lint_ci.py`` plant defects in a copy of this repository's CI)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vllm_ep_kit.lint.area import Finding
from vllm_ep_kit.lint.lint import lint


class CiTree:
    """A repository root under ``tmp_path``: test areas and the files their steps name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, path: str, text: str = "") -> CiTree:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(textwrap.dedent(text))
        return self

    def area(self, text: str, name: str = "area.yaml") -> CiTree:
        """A test-area file in ``.buildkite/test_areas/`` (where trees without a
        ``ci_config.yaml`` keep them)."""
        return self.write(f".buildkite/test_areas/{name}", text)

    def findings(self, rule: str) -> list[Finding]:
        """What ``rule`` finds (other rules' findings are left out)."""
        return [f for f in lint(self.root, select={rule}) if f.rule == rule]

    def messages(self, rule: str) -> list[str]:
        return [f.message for f in self.findings(rule)]

    def line_of(self, text: str, name: str = "area.yaml") -> int:
        """The 1-based line of the first line of area ``name`` that contains ``text``."""
        lines = (self.root / ".buildkite/test_areas" / name).read_text().splitlines()
        return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.fixture
def ci(tmp_path: Path) -> CiTree:
    return CiTree(tmp_path)
