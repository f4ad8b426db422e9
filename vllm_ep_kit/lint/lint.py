"""Run every rule over a repository's CI files; return the findings (the CLI prints them).

One walk of the tree: the files of every ``job_dirs`` folder that hold steps
(pipeline.py), each step read once as the pipeline generator reads it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Set as AbstractSet
from pathlib import Path, PurePosixPath

import yaml

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.area import Area, AreaError, Finding
from vllm_ep_kit.lint.pipeline import area_files, read_steps
from vllm_ep_kit.lint.rules import ALL_RULES, listed_not_run

DEFAULT_GLOB = ".buildkite/test_areas/*.yaml"  # what older trees hold (no ci_config.yaml)


def _display(root: Path, file: Path) -> str:
    resolved = file.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(file)


def load_areas(
    root: Path, files: list[Path], keep_all: bool = False
) -> tuple[list[Area], list[Finding]]:
    """The files that hold steps (every file with ``keep_all``), and a finding for each file
    that cannot be read as YAML."""
    areas, findings = [], []
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
            findings.append(
                Finding(
                    display,
                    mark.line + 1 if mark else 1,
                    "yaml",
                    " ".join(
                        line.strip()
                        for line in first
                        if line.strip() and not line.strip().startswith("^")
                    ),
                )
            )
            continue
        if keep_all or area.holds_steps:
            areas.append(area)
    return areas, findings


def tree_generator(root: Path, as_of: str | None = None) -> conventions.Generator:
    """The generator that read this tree: of ``as_of``, else of the tree's last change to its
    CI files, else the newest."""
    return conventions.generator(as_of or conventions.tree_date(root.resolve()))


def lint(
    root: Path,
    files: list[Path] | None = None,
    select: set[str] | None = None,
    ignore: AbstractSet[str] = frozenset(),
    generator: conventions.Generator | None = None,
    fold_causes: bool = True,
) -> list[Finding]:
    """The findings of every rule (``select`` / ``ignore`` by name), suppressions applied;
    one per cause unless ``fold_causes`` is false (then each place is a finding of its own,
    for tools that follow one place across commits)."""
    root = root.resolve()
    generator = generator or tree_generator(root)
    listed = files is not None and len(files) > 0
    files = files or area_files(root)
    areas, findings = load_areas(root, files, keep_all=listed)
    if not files:
        findings.append(
            Finding(
                str(root / DEFAULT_GLOB),
                1,
                "no-areas",
                "no test-area files found (no job_dirs in .buildkite/ci_config"
                "*.yaml, no .buildkite/test_areas/)",
                "pass files or run from the repository root",
            )
        )
    ctx = read_steps(root, areas, generator)
    for rule in ALL_RULES:
        if (select and rule.RULE not in select) or rule.RULE in ignore:
            continue
        findings.extend(rule.check(ctx))
    findings = [
        f
        for f in findings
        if (not select or f.rule in select or f.rule in ("yaml", "encoding", "no-areas"))
        and f.rule not in ignore
    ]
    if fold_causes:
        findings = fold(findings)
    else:  # still one finding per place: a file a command runs twice
        findings = list({(f.path, f.line, f.rule, f.message): f for f in findings}.values())
    return sorted(apply_suppressions(root, findings), key=lambda f: (f.path, f.line, f.rule))


MIRROR_LABEL = re.compile(r" \[mirror ([^\]]+)\]")


def fold(findings: list[Finding]) -> list[Finding]:
    """One finding per cause: the same finding twice (a file a command runs twice) is one; a
    mirror's finding on a value it inherits joins its step's (``also mirror amd``); findings of
    one rule that name the same cause (the same stale entry in six steps) join the first,
    which lists the other places."""
    groups: dict[tuple, list[Finding]] = {}
    # the place a cause is reported at: the first, the AMD template's file last (a copy)
    for finding in sorted(
        findings, key=lambda f: (f.path == conventions.AMD_PIPELINE, f.path, f.line)
    ):
        if finding.cause:
            key: tuple = (finding.rule, finding.cause)
        else:
            key = (finding.path, finding.line, finding.rule, MIRROR_LABEL.sub("", finding.message))
        groups.setdefault(key, []).append(finding)
    folded = []
    for members in groups.values():
        own = [m for m in members if not MIRROR_LABEL.search(m.message)]
        kept = (own or members)[0]
        also: list[str] = []
        for member in members:
            if member is kept:
                continue
            match = MIRROR_LABEL.search(member.message)
            if (member.path, member.line) != (kept.path, kept.line):
                place = f"{member.path}:{member.line}"
            elif match:
                place = f"mirror {match.group(1)}"
            else:
                continue
            if place not in also:
                also.append(place)
        folded.append(dataclasses.replace(kept, also=(*kept.also, *also)) if also else kept)
    return folded


SUPPRESSION = re.compile(r"#\s*lint-ci:\s*ignore\[([a-z0-9_,\s-]+)\]\s*:?\s*(.*)$")


def apply_suppressions(root: Path, findings: list[Finding]) -> list[Finding]:
    """Drop a finding whose line (or the line above) says ``# lint-ci: ignore[rule] why``.

    The reason is required: a suppression without one suppresses nothing and is a
    finding of its own, so every silenced finding carries its justification.
    """
    lines_of: dict[str, list[str]] = {}
    kept, unexplained = [], {}
    for finding in findings:
        if finding.path not in lines_of:
            try:
                lines_of[finding.path] = (
                    (root / finding.path).read_text(errors="replace").splitlines()
                )
            except OSError:
                lines_of[finding.path] = []
        lines = lines_of[finding.path]
        suppressed = False
        for number in (finding.line, finding.line - 1):
            match = SUPPRESSION.search(lines[number - 1]) if 0 < number <= len(lines) else None
            if not match or finding.rule not in {r.strip() for r in match.group(1).split(",")}:
                continue
            if match.group(2).strip():
                suppressed = True
            else:
                unexplained[(finding.path, number)] = Finding(
                    finding.path,
                    number,
                    "suppression",
                    f"`lint-ci: ignore[{match.group(1)}]` "
                    "gives no reason, so it suppresses nothing",
                    "add why after the bracket: # lint-ci: ignore[rule] reason",
                )
        if not suppressed:
            kept.append(finding)
    return kept + list(unexplained.values())


def without_baseline(findings: list[Finding], baseline: list[dict]) -> list[Finding]:
    """Findings not in ``baseline`` (a ``--format json`` output); lines may have moved."""
    known = {
        (b.get("path"), b.get("rule"), b.get("message")) for b in baseline if isinstance(b, dict)
    }
    return [f for f in findings if (f.path, f.rule, f.message) not in known]


__all__ = ["explain", "lint"]


def explain(root: Path, path: str, generator: conventions.Generator | None = None) -> list[dict]:
    """Every step that runs ``path`` (a test, a script, or a folder holding it) or lists it
    (a change to it selects the step): where, on what, and whether it runs on its own."""
    root = root.resolve()
    generator = generator or tree_generator(root)
    target = str(PurePosixPath(path))
    run_all = conventions.run_all_patterns(root)
    rows = []
    for step in read_steps(root, load_areas(root, area_files(root))[0], generator).steps:
        runs = listed_not_run.runs(step, target)
        # no dependencies: the generator runs it on every change
        lists = (
            not step.dependencies
            or generator.covered(target, step.dependencies)
            or conventions.runs_everything(target, run_all)
        )
        if not runs and not (step.dependencies and generator.covered(target, step.dependencies)):
            continue  # neither runs it nor names it
        rows.append(
            {
                "step": step.label,
                "where": f"{step.area.display}:{step.line()}",
                "device": step.device or step.raw.get("agent_pool") or "default GPU pool",
                "gpus": step.gpus,
                "sees": step.generator.sees(step.raw),
                "optional": step.optional,
                "runs_it": runs,
                "selected_by_it": lists,
            }
        )
    return rows
