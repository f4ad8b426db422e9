"""Run every rule over a repository's test areas; return the findings (the CLI prints them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from vllm_ep_kit.buildkite.area import Area, AreaError, Finding
from vllm_ep_kit.buildkite.rules import ALL_RULES

DEFAULT_GLOB = ".buildkite/test_areas/*.yaml"


@dataclass
class LintContext:
    root: Path
    areas: list[Area]


def lint(root: Path, files: list[Path] | None = None) -> list[Finding]:
    root = root.resolve()
    files = files or sorted(root.glob(DEFAULT_GLOB))
    findings, areas = [], []
    for file in files:
        display = str(file.resolve().relative_to(root)) if file.resolve().is_relative_to(root) \
            else str(file)
        try:
            areas.append(Area.load(file, display))
        except AreaError as exc:
            findings.append(Finding(display, exc.line, exc.rule, str(exc)))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            first = str(exc).strip().splitlines()
            findings.append(Finding(display, mark.line + 1 if mark else 1, "yaml",
                                    " ".join(line.strip() for line in first if line.strip()
                                             and not line.strip().startswith("^"))))
    if not files:
        findings.append(Finding(str(root / DEFAULT_GLOB), 1, "no-areas",
                                "no test-area files found", "pass files or run from the repo"))
    ctx = LintContext(root=root, areas=areas)
    for rule in ALL_RULES:
        findings.extend(rule.check(ctx))
    return sorted(findings, key=lambda f: (f.path, f.line, f.rule))
