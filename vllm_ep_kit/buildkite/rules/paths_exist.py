"""Every test file and script a step runs exists, resolved as the step's shell resolves it.

Each file is looked up from the folder it is named in: the step's ``working_dir``
(vLLM's default ``/vllm-workspace/tests``), then any ``cd`` before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm_ep_kit.buildkite.area import Finding
    from vllm_ep_kit.buildkite.pipeline import Pipeline

RULE = "path-exists"
UNRESOLVED = ("$", "*", "{", "?")  # a variable or a glob: the shell decides


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        for info in step.parsed():
            for written, repo in zip(info.files, info.repo_files, strict=True):
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
