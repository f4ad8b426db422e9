"""A step runs a test or script that none of its dependency entries covers.

Such a step does not re-run when that very test changes: a PR fixing the test is
never checked by CI.  Only the files the commands name count here, and the folders
pytest is handed (``pytest reasoning`` from ``tests/``), where they exist; a folder
counts as itself.  The ``dependencies`` rule goes further, through imports, where a
tree is not vLLM's own.

One missing entry is one finding: the uncovered paths of a step that share a folder
are reported together (at the first command that runs one, the others' lines listed),
since one entry for that folder mends them all.  An optional step's entries are read
only once it stops being optional; its findings say so.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.rules.stale_dependency import meant

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline, Step

RULE = "uncovered"
LISTED = 4  # paths a grouped finding names before "and N more"


def uncovered_paths(
    ctx: Pipeline, step: Step, run_all: tuple[list[str], list[str]]
) -> dict[str, int]:
    """Each path the step runs that no entry covers, with the command that first runs it."""
    # an entry that lost its suffix is the cause: stale-dependency reports it
    misspelt = {meant(ctx.root, entry) for entry in step.dependencies}
    found: dict[str, int] = {}
    for info in step.parsed():
        for repo in [*info.repo_files, *info.run_paths]:
            if not repo or repo in found or repo in (".", *misspelt):
                continue
            if not (ctx.root / repo).exists():
                continue  # outside the tree (path-exists reports missing files)
            # a folder changes through the files in it: test a path inside it
            changed = repo + "/" if (ctx.root / repo).is_dir() else repo
            if step.generator.covered(changed, step.dependencies):
                continue
            if conventions.runs_everything(changed, run_all):
                continue  # a change to it runs every step
            found[repo] = info.index
    return found


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    run_all = conventions.run_all_patterns(ctx.root)
    for step in ctx.steps:
        if not step.dependencies:
            continue  # no dependencies: the generator runs it on every change
        by_folder: dict[str, dict[str, int]] = {}
        found = uncovered_paths(ctx, step, run_all)
        for repo in sorted(found, key=lambda path: path.count("/")):
            # its folder (a top-level one such as tests/ is too wide to be one entry)
            folder = posixpath.dirname(repo) if repo.count("/") >= 2 else repo
            # under a folder already holding some: the entry for that folder mends it too
            home = next((f for f in by_folder if f"{folder}/".startswith(f"{f}/")), folder)
            by_folder.setdefault(home, {})[repo] = found[repo]
        optional = " (an optional step: this counts once it is not)" if step.optional else ""
        for folder, group in by_folder.items():
            # each path's place (the line naming it), in the file's order
            lines = {
                repo: step.finding(("commands", index), RULE, "", word=repo).line
                for repo, index in group.items()
            }
            paths = {repo: group[repo] for repo in sorted(group, key=lines.__getitem__)}
            if len(paths) == 1:
                (repo,) = paths
                message = (
                    f"step {step.label!r} runs {repo}, which no entry of its "
                    "source_file_dependencies covers (a change to it does not re-run the step)"
                )
                hint = f"add `{repo}` (or its folder) to source_file_dependencies"
            else:
                named = ", ".join(list(paths)[:LISTED])
                more = f" and {len(paths) - LISTED} more" if len(paths) > LISTED else ""
                message = (
                    f"step {step.label!r} runs {len(paths)} paths under {folder}/ that no "
                    f"entry of its source_file_dependencies covers: {named}{more} (a change "
                    "to them does not re-run the step)"
                )
                hint = f"add `{folder}/` (or each path) to source_file_dependencies"
            places = [
                step.finding(("commands", index), RULE, message + optional, hint, word=repo)
                for repo, index in paths.items()
            ]
            finding = places[0]
            finding.cause = " ".join(paths)  # other steps running the same: one cause
            here = f"{finding.path}:{finding.line}"
            finding.also = tuple(
                dict.fromkeys(f"{p.path}:{p.line}" for p in places if f"{p.path}:{p.line}" != here)
            )
            findings.append(finding)
    return findings
