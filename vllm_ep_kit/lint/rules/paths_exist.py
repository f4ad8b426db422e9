"""Every test file and script a step runs exists, resolved as the step's shell resolves it.

Each file is looked up from the folder it is named in: the step's ``working_dir``
(vLLM's default ``/vllm-workspace/tests``), then any ``cd`` before it.  Where a path
named from the step's own ``working_dir`` exists from the root or from ``tests/``
instead, and no path the step names exists where it looks, the ``working_dir`` is the
cause, and the finding points at it.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.commands import CommandInfo
    from vllm_ep_kit.lint.pipeline import Pipeline, Step

RULE = "path-exists"
UNRESOLVED = ("$", "*", "{", "?")  # a variable or a glob: the shell decides
BASES = ("", "tests")  # where a path meant from another folder usually lives


def _named(i: CommandInfo) -> Iterator[tuple[str, str]]:
    """(as written, as a repository path) of each file command ``i`` names; commands.py fills
    the two lists together, so ``strict`` never decides."""
    return zip(i.files, i.repo_files, strict=True)  # pragma: no mutate (equivalent: same length)


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        for info in step.parsed():
            for written, repo in _named(info):
                if not repo or any(mark in written for mark in UNRESOLVED):
                    continue  # outside the workspace (the image's own files), or unknown
                if not (ctx.root / repo).exists():
                    moved = _working_dir_cause(ctx, step, written, repo)
                    if moved:
                        findings.append(moved)
                        continue
                    where = f" ({repo} from {step.working_dir})" if repo != written else ""
                    findings.append(
                        step.finding(
                            ("commands", info.index),
                            RULE,
                            f"step {step.label!r} runs {written}{where}, which does not exist",
                            "fix the path or add the file",
                            word=written,
                        )
                    )
    return findings


def _working_dir_cause(ctx: Pipeline, step: Step, written: str, repo: str) -> Finding | None:
    """The finding at the step's own ``working_dir`` when the path was named from it and
    exists from another usual folder; else None."""
    start = conventions.to_repo_path(step.working_dir)
    if "working_dir" not in step.raw or start is None:
        return None
    if repo != posixpath.normpath(posixpath.join(str(start), written)):
        return None  # named after a ``cd``: the working_dir is not the cause
    if any((ctx.root / p).exists() for info in step.parsed() for p in info.repo_files if p):
        return None  # it serves the step's other paths: the path is the cause
    for base in BASES:
        there = posixpath.normpath(posixpath.join(base, written))
        if (ctx.root / there).exists():  # not ``repo``: that one does not exist
            folder = posixpath.join(conventions.WORKSPACE, base) if base else conventions.WORKSPACE
            return step.finding(
                ("working_dir",),
                RULE,
                f"step {step.label!r} runs {written} from working_dir {step.working_dir}, "
                f"where it does not exist; {there} does",
                f"set working_dir to {folder}, or write the path from {step.working_dir}",
            )
    return None
