"""Step labels (and keys) are unique across all test areas: Buildkite and humans key on them."""

from __future__ import annotations

RULE = "unique-labels"


def check(ctx) -> list:
    findings, seen = [], {}
    for area in ctx.areas:
        for i, step in area.indexed_steps():
            for field in ("label", "key"):
                value = step.get(field)
                if value is None:
                    continue
                if (field, value) in seen:
                    other = seen[(field, value)]
                    findings.append(area.finding(
                        ("steps", i, field), RULE,
                        f"{field} {value!r} is already used at {other}",
                        f"rename one of the two steps' {field}"))
                else:
                    seen[(field, value)] = f"{area.display}:{area.line('steps', i, field)}"
    return findings
