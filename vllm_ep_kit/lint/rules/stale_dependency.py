"""A ``source_file_dependencies`` entry that names nothing in the tree, or never matches.

An entry matches a changed path exactly or as a folder prefix, so
``tests/distributed/test_pynccl`` (no ``.py``) matches no change at all: the step
does not re-run when that test changes.  Nor does an entry written otherwise than the
changed paths are (from the repository root, without ``./``, ``..``, ``//`` or a leading
``/``), even where the file it points at exists.  Optional steps are skipped (the
generator never consults their dependencies).
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.pipeline import consulted_entries

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "stale-dependency"


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step, index, entry in consulted_entries(ctx.steps):
        path = entry[1:] if entry.startswith("!") else entry
        if not path or any(mark in path for mark in ("*", "$")):
            continue
        bare = path.rstrip("/")
        written = posixpath.normpath(bare)
        if path.startswith("/") or written != bare:
            findings.append(
                step.finding(
                    ("source_file_dependencies", index),
                    RULE,
                    f"step {step.label!r}: entry {entry!r} matches no change: changed paths are "
                    "written from the repository root, without ./, .., // or a leading /",
                    "write it from the repository root"
                    if path.startswith("/")
                    else f"write `{entry[: len(entry) - len(path)]}{written}`",
                )
            )
            continue
        target = ctx.root / path  # a Path drops a trailing slash
        if target.exists():
            continue
        near = [s for s in (".py", ".sh", ".yaml") if target.with_name(target.name + s).exists()]
        if near:
            message = (
                f"entry {entry!r} matches no change: {bare}{near[0]} exists, and an "
                "entry matches only a path or a folder"
            )
            hint = f"write `{entry[: len(entry) - len(path)]}{bare}{near[0]}`"
        else:
            message = f"entry {entry!r} names nothing in the tree"
            hint = "fix the path or remove the entry"
        findings.append(
            step.finding(
                ("source_file_dependencies", index), RULE, f"step {step.label!r}: {message}", hint
            )
        )
    return findings
