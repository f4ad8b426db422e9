"""A ``source_file_dependencies`` entry that names nothing in the tree, or never matches.

An entry matches a changed path exactly or as a folder prefix, so
``tests/distributed/test_pynccl`` (no ``.py``) matches no change at all: the step
does not re-run when that test changes.  Nor does an entry written otherwise than the
changed paths are (from the repository root, without ``./``, ``..``, ``//`` or a leading
``/``), even where the file it points at exists.  An optional step's entries are read
only once it stops being optional; its findings say so.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "stale-dependency"
NEAR = (".py", ".sh", ".yaml")  # what an entry without its suffix usually meant


def meant(root, entry: str) -> str | None:
    """The file an entry that names nothing meant (``tests/a`` for ``tests/a.py``)."""
    path = entry.lstrip("!").rstrip("/")
    if not path or (root / path).exists():
        return None
    return next((path + s for s in NEAR if (root / (path + s)).is_file()), None)


def check(ctx: Pipeline) -> list[Finding]:
    findings: list[Finding] = []
    run_all = conventions.run_all_patterns(ctx.root)

    def report(step, index: int, entry: str, message: str, hint: str) -> None:
        if step.optional:
            message += " (an optional step: this counts once it is not)"
        finding = step.finding(
            ("source_file_dependencies", index), RULE, f"step {step.label!r}: {message}", hint
        )
        finding.cause = entry  # the same entry in other steps: one cause, one finding
        findings.append(finding)

    every = (
        (step, index, entry) for step in ctx.steps for index, entry in enumerate(step.dependencies)
    )
    for step, index, entry in every:
        path = entry[1:] if entry.startswith("!") else entry
        if not path or any(mark in path for mark in ("*", "$")):
            continue
        if conventions.runs_everything(path, run_all):
            continue  # whatever it names, a change there runs every step (csrc/): no effect
        reader = step.generator
        if reader.match in ("substring", "prefix"):
            anywhere = (
                ctx.has_path_holding if reader.match == "substring" else ctx.has_path_starting
            )
            if not anywhere(path):
                report(
                    step,
                    index,
                    entry,
                    f"entry {entry!r} is part of no path in the tree "
                    f"({reader.describe()} matches an entry as a {reader.match})",
                    "fix the path or remove the entry",
                )
            continue
        bare = path.rstrip("/")
        written = posixpath.normpath(bare)
        if path.startswith("/") or written != bare:
            report(
                step,
                index,
                entry,
                f"entry {entry!r} matches no change: changed paths are "
                "written from the repository root, without ./, .., // or a leading /",
                "write it from the repository root"
                if path.startswith("/")
                else f"write `{entry[: len(entry) - len(path)]}{written}`",
            )
            continue
        if (ctx.root / path).exists():  # a Path drops a trailing slash
            continue
        file = meant(ctx.root, entry)
        if file:
            message = (
                f"entry {entry!r} matches no change: {file} exists, and an "
                "entry matches only a path or a folder"
            )
            if not reader.covered(file, step.dependencies) and any(
                file in info.repo_files for info in step.parsed()
            ):
                message += f"; the step runs {file}, so a change to it does not re-run the step"
            report(step, index, entry, message, f"write `{entry[: len(entry) - len(path)]}{file}`")
        else:
            report(
                step,
                index,
                entry,
                f"entry {entry!r} names nothing in the tree",
                "fix the path or remove the entry",
            )
    return findings
