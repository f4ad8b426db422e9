"""A boolean flag is spelled one way everywhere (``1`` or ``true``, not ``True`` here and ``1`` there).

Scripts often test ``[[ $FLAG == 1 ]]``: a step that writes ``FLAG=True`` then
silently runs the other branch.  Upstream's disaggregated split did exactly that.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.commands import parse_commands

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "flag-spelling"
SPELLINGS = {
    "1": "1/0",
    "0": "1/0",
    "true": "true/false",
    "false": "true/false",
    "True": "True/False",
    "False": "True/False",
    "yes": "yes/no",
    "no": "yes/no",
    "on": "on/off",
    "off": "on/off",
}


def check(ctx: Pipeline) -> list[Finding]:
    uses = defaultdict(list)  # name -> [(style, value, area, keys)]
    for step in ctx.steps:
        if step.mirror:
            continue  # its commands and env are its step's, or its own hardware's
        for info in parse_commands(step.commands):
            for name, value in info.env.items():
                if value in SPELLINGS:
                    uses[name].append(
                        (SPELLINGS[value], value, step.area, step.keys + ("commands", info.index))
                    )
        for name, value in step.env.items():
            value = str(value) if not isinstance(value, bool) else str(value).lower()
            if value in SPELLINGS:
                uses[name].append((SPELLINGS[value], value, step.area, step.keys + ("env", name)))
    findings: list[Finding] = []
    for name, entries in uses.items():
        styles = Counter(style for style, *_ in entries)
        if len(styles) < 2:
            continue
        usual = max(styles, key=lambda s: (styles[s], s == "1/0"))  # a tie goes to 1/0
        findings.extend(
            area.finding(
                keys,
                RULE,
                f"{name}={value} while other steps spell it {usual}",
                f"write {name} as {usual.replace('/', ' / ')}",
            )
            for style, value, area, keys in entries
            if style != usual
        )
    return findings
