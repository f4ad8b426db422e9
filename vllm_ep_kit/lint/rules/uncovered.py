"""A non-optional step runs a test or script that none of its dependency entries covers.

Such a step does not re-run when that very test changes: a PR fixing the test is
never checked by CI.  Only the files the commands name count here (a test folder
counts as itself); the ``dependencies`` rule goes further, through imports, where
a tree is not vLLM's own.  Optional steps are skipped (never selected by changes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.rules.stale_dependency import meant

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "uncovered"


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    run_all = conventions.run_all_patterns(ctx.root)
    for step in ctx.steps:
        if step.optional or not step.dependencies:
            continue  # no dependencies: the generator runs it on every change
        # an entry that lost its suffix is the cause: stale-dependency reports it
        misspelt = {meant(ctx.root, entry) for entry in step.dependencies}
        for info in step.parsed():
            for repo in info.repo_files:
                if not repo or not (ctx.root / repo).exists() or repo in misspelt:
                    continue  # outside the tree (path-exists reports missing files)
                # a folder changes through the files in it: test a path inside it
                changed = repo + "/" if (ctx.root / repo).is_dir() else repo
                if step.generator.covered(
                    changed, step.dependencies
                ) or conventions.runs_everything(changed, run_all):
                    continue  # listed, or a change to it runs every step
                finding = step.finding(
                    ("commands", info.index),
                    RULE,
                    f"step {step.label!r} runs {repo}, which no entry of its "
                    "source_file_dependencies covers (a change to it does not re-run the step)",
                    f"add `{repo}` (or its folder) to source_file_dependencies",
                )
                finding.cause = repo  # other steps running it uncovered: one cause
                findings.append(finding)
    return findings
