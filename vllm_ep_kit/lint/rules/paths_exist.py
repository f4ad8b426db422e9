"""Every test file and script a step runs exists, resolved as the step's shell resolves it.

Each file is looked up from the folder it is named in: the step's ``working_dir``
(vLLM's default ``/vllm-workspace/tests``), then any ``cd`` before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.commands import CommandInfo
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "path-exists"
UNRESOLVED = ("$", "*", "{", "?")  # a variable or a glob: the shell decides


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
                    where = f" ({repo} from {step.working_dir})" if repo != written else ""
                    findings.append(
                        step.finding(
                            ("commands", info.index),
                            RULE,
                            f"step {step.label!r} runs {written}{where}, which does not exist",
                            "fix the path or add the file",
                        )
                    )
    return findings
