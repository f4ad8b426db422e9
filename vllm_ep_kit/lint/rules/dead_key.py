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
    reader = step.generator.pipeline.removeprefix("ci-infra's ")
    finding = step.area.finding(
        keys,
        RULE,
        f"step {step.label!r}: key {key!r} is not read by the {reader} (dropped silently)",
        hint,
    )
    if step.generator.pipeline != conventions.NEWEST_GENERATOR.pipeline:
        # a key a whole file uses that its template drops: one cause
        finding.cause = f"{step.area.display}:{key}"
    return finding


def _not_yet(key: str, places: list[tuple[Step, tuple]]) -> Finding:
    """A key a later generator reads: one cause however many steps carry it."""
    since = next(c for c in conventions.HISTORY if key in c.keys)
    step, keys = places[0]
    finding = step.area.finding(
        keys,
        RULE,
        f"key {key!r} is not read by {step.generator.describe()}: it is read from "
        f"{since.since[:10]} ({since.rev}); until then it does nothing in any step",
        f"do not rely on it before {since.since[:10]}",
    )
    if len(places) > 1:
        files = {s.area.display for s, _ in places}
        finding.also = (f"{len(places) - 1} more step(s) in {len(files)} file(s)",)
    return finding


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    later: dict[str, list[tuple[Step, tuple]]] = {}
    newest = conventions.NEWEST_GENERATOR
    for step in ctx.steps:
        if step.parent:  # a mirror block: a step of its own, whose keys are the block's
            block = step.parent.raw["mirror"][step.keys[-1]]
            known, read_later = step.generator.mirror_keys, newest.mirror_keys
        else:
            block, known, read_later = step.raw, step.generator.step_keys, newest.step_keys
        if step.generator.pipeline != newest.pipeline:
            read_later = frozenset()  # another pipeline's template: no later release of it
        for key in block:
            if key in known:
                continue
            if key in read_later:
                later.setdefault(key, []).append((step, step.keys + (key,)))
            else:
                findings.append(_finding(step, step.keys + (key,), key, known))
    return findings + [_not_yet(key, places) for key, places in later.items()]
