"""A step key the pipeline generator does not read (its step model drops unknown keys).

``autorun_on_main``, ``num_gpus``, ``gpu`` sit in upstream's files today: whoever wrote
them believes something happens that does not.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline, Step

RULE = "dead-key"
# What such a key is usually meant to say (difflib's nearest spelling is not it).
MEANT = {
    "num_gpus": "num_devices",
    "gpus": "num_devices",
    "gpu": "device",
    "num_gpu": "num_devices",
    "nodes": "num_nodes",
    "timeout": "timeout_in_minutes",
    "dependencies": "source_file_dependencies",
    "command": "commands",
}


def _finding(step: Step, keys: tuple[str | int, ...], key: object, known: Iterable[str]) -> Finding:
    # difflib's best match first (its default cutoff, 0.6, is the one wanted)
    close = [MEANT[key]] if key in MEANT else difflib.get_close_matches(str(key), sorted(known))
    hint = f"did you mean `{close[0]}`?" if close else "remove it (the generator ignores it)"
    return step.area.finding(
        keys,
        RULE,
        f"step {step.label!r}: key {key!r} is not read by the "
        "pipeline generator (dropped silently)",
        hint,
    )


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        if step.parent:  # a mirror block: a step of its own, whose keys are the block's
            block, known = step.parent.raw["mirror"][step.keys[-1]], conventions.MIRROR_KEYS
        else:
            block, known = step.raw, conventions.STEP_KEYS
        findings += [_finding(step, step.keys + (k,), k, known) for k in block if k not in known]
    return findings
