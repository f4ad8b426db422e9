"""A step lists a test file in its dependencies but runs it nowhere that runs on its own.

The author meant the step to cover the test; if no command of the step runs it and
the only steps that do are optional (or there are none), the test runs in no
automatic build: the MNNVL suite's case (listed by the 2-GPU step, run only by an
optional 4-GPU one).
"""

from __future__ import annotations

import fnmatch
import posixpath
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.pipeline import consulted_entries

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "listed-not-run"


def runs(step, path: str) -> bool:
    """Whether a command of ``step`` runs ``path``: names it, a folder holding it, or a glob
    matching it."""
    for info in step.parsed():
        for repo in [*info.repo_files, *info.run_paths]:
            if not repo:
                continue
            if glob_runs(repo, path):  # repo: normalized, no "/" at the end
                return True
    return False


def glob_runs(pattern: str, path: str) -> bool:
    """Whether ``pattern`` names ``path`` or a folder holding it, as written or as the
    shell expands it (``*``, ``?``, ``[...]`` within one folder level)."""
    parts, names = pattern.split("/"), path.split("/")
    return len(names) >= len(parts) and all(
        fnmatch.fnmatchcase(names[level], part) for level, part in enumerate(parts)
    )


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step, index, entry in consulted_entries(ctx.steps):
        name = posixpath.basename(entry)
        if entry.startswith("!") or not (name.startswith("test_") and name.endswith(".py")):
            continue
        if not (ctx.root / entry).is_file() or runs(step, entry):
            continue
        runners = [other for other in ctx.steps if other is not step and runs(other, entry)]
        if any(not other.optional for other in runners):
            continue
        where = (
            f"only optional steps run it ({', '.join(repr(o.label) for o in runners)}), "
            f"which only {step.generator.optional_runs()} run"
            if runners
            else "no step runs it"
        )
        findings.append(
            step.finding(
                ("source_file_dependencies", index),
                RULE,
                f"step {step.label!r} lists {entry} but does not run it; {where}",
                f"run it in this step (e.g. `pytest -v {entry}`), or make a runner non-optional",
            )
        )
    return findings
