"""Run every rule over a repository's CI files; return the findings (the CLI prints them).

One walk of the tree: the files of every ``job_dirs`` folder that hold steps
(pipeline.py), each step read once as the pipeline generator reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vllm_ep_kit.buildkite import conventions
from vllm_ep_kit.buildkite.area import Area, AreaError, Finding
from vllm_ep_kit.buildkite.pipeline import Step, area_files, read_steps
from vllm_ep_kit.buildkite.rules import ALL_RULES

DEFAULT_GLOB = ".buildkite/test_areas/*.yaml"  # what older trees hold (no ci_config.yaml)


@dataclass
class LintContext:
    root: Path
    areas: list[Area]
    steps: list[Step] = field(default_factory=list)
    vllm_tree: bool = False
    pipelines: dict[str, set[str]] = field(default_factory=dict)  # config -> area paths


def _display(root: Path, file: Path) -> str:
    resolved = file.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(file)


def _pipelines(root: Path, displays: list[str]) -> dict[str, set[str]]:
    """Which area files each ``ci_config*.yaml`` pipeline reads ('' when there is none)."""
    configs = sorted((root / ".buildkite").glob("ci_config*.yaml"))
    if not configs:
        return {"": set(displays)}
    result = {}
    for config in configs:
        try:
            dirs = (yaml.safe_load(config.read_text()) or {}).get("job_dirs") or []
        except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
            continue
        result[config.name] = {d for d in displays for folder in dirs if isinstance(folder, str)
                               and d.startswith(folder.rstrip("/") + "/")}
    return result or {"": set(displays)}


def lint(root: Path, files: list[Path] | None = None, select: set[str] | None = None,
         ignore: set[str] = frozenset()) -> list[Finding]:
    root = root.resolve()
    listed = files is not None and len(files) > 0
    files = files or area_files(root)
    findings, areas = [], []
    for file in files:
        display = _display(root, file)
        try:
            area = Area.load(file, display)
        except AreaError as exc:
            findings.append(Finding(display, exc.line, exc.rule, str(exc)))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            first = str(exc).strip().splitlines()
            findings.append(Finding(display, mark.line + 1 if mark else 1, "yaml",
                                    " ".join(line.strip() for line in first if line.strip()
                                             and not line.strip().startswith("^"))))
            continue
        if listed or area.holds_steps:
            areas.append(area)
    if not files:
        findings.append(Finding(str(root / DEFAULT_GLOB), 1, "no-areas",
                                "no test-area files found (no job_dirs in .buildkite/ci_config"
                                "*.yaml, no .buildkite/test_areas/)", "pass files or run from "
                                                                      "the repository root"))
    pipeline = read_steps(root, areas)
    ctx = LintContext(root=root, areas=areas, steps=pipeline.steps,
                      vllm_tree=pipeline.vllm_tree,
                      pipelines=_pipelines(root, [a.display for a in areas]))
    for rule in ALL_RULES:
        if (select and rule.RULE not in select) or rule.RULE in ignore:
            continue
        findings.extend(rule.check(ctx))
    findings = [f for f in findings if (not select or f.rule in select or f.rule in
                                        ("yaml", "encoding", "no-areas")) and f.rule not in ignore]
    return sorted(findings, key=lambda f: (f.path, f.line, f.rule))


__all__ = ["lint", "LintContext", "conventions"]
