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

import dataclasses
import posixpath
from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.rules.stale_dependency import meant

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "uncovered"
LISTED = 4  # paths a grouped finding names before "and N more"


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    run_all = conventions.run_all_patterns(ctx.root)
    for step in ctx.steps:
        if not step.dependencies:
            continue  # no dependencies: the generator runs it on every change
        # an entry that lost its suffix is the cause: stale-dependency reports it
        skip = {"", *(meant(ctx.root, entry) for entry in step.dependencies)}
        found: dict[str, Finding] = {}  # each uncovered path, at the line naming it
        for info in step.parsed():
            for repo in [*info.repo_files, *info.run_paths]:
                if repo in found or repo in skip or not (ctx.root / repo).exists():
                    continue  # outside the tree (path-exists reports missing files)
                # a folder changes through the files in it: test a path inside it
                changed = repo + "/" if (ctx.root / repo).is_dir() else repo
                if step.generator.covered(changed, step.dependencies):
                    continue
                if conventions.runs_everything(changed, run_all):
                    continue  # a change to it runs every step
                found[repo] = step.at(("commands", info.index), word=repo)
        by_folder: dict[str, list[str]] = {}
        for repo in sorted(found, key=lambda path: path.count("/")):
            # its folder (a top-level one such as tests/ is too wide to be one entry)
            folder = posixpath.dirname(repo) if repo.count("/") >= 2 else repo
            # under a folder already holding some: the entry for that folder mends it too
            home = next((f for f in by_folder if f"{folder}/".startswith(f"{f}/")), folder)
            by_folder.setdefault(home, []).append(repo)
        optional = " (an optional step: this counts once it is not)" if step.optional else ""
        for folder, group in by_folder.items():
            paths = sorted(group, key=lambda repo: found[repo].line)  # the file's order
            if len(paths) == 1:
                message = (
                    f"step {step.label!r} runs {paths[0]}, which no entry of its "
                    "source_file_dependencies covers (a change to it does not re-run the step)"
                )
                hint = f"add `{paths[0]}` (or its folder) to source_file_dependencies"
            else:
                named = ", ".join(paths[:LISTED])
                more = f" and {len(paths) - LISTED} more" if len(paths) > LISTED else ""
                message = (
                    f"step {step.label!r} runs {len(paths)} paths under {folder}/ that no "
                    f"entry of its source_file_dependencies covers: {named}{more} (a change "
                    "to them does not re-run the step)"
                )
                hint = f"add `{folder}/` (or each path) to source_file_dependencies"
            first = found[paths[0]]
            here = f"{first.path}:{first.line}"
            others = (f"{found[p].path}:{found[p].line}" for p in paths[1:])
            finding = dataclasses.replace(
                first,
                rule=RULE,
                message=message + optional,
                hint=hint,
                also=tuple(dict.fromkeys(place for place in others if place != here)),
            )
            # other steps running the same paths: one cause
            finding.cause = " ".join(paths)  # pragma: no mutate (equivalent: any separator)
            findings.append(finding)
    return findings
