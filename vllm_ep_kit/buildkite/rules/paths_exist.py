"""Every test file and script a step runs exists (relative to the repository or working_dir)."""

from __future__ import annotations

from vllm_ep_kit.buildkite.commands import parse_commands

RULE = "path-exists"


def check(ctx) -> list:
    findings = []
    for area in ctx.areas:
        for i, step in area.indexed_steps():
            base = ctx.root / step.get("working_dir", ".").lstrip("/")
            for info in parse_commands(step.get("commands", []), step.get("env")):
                for path in info.files:
                    if not (base / path).exists() and not (ctx.root / path).exists():
                        findings.append(area.finding(
                            ("steps", i, "commands", info.index), RULE,
                            f"step {step.get('label')!r} runs {path}, which does not exist",
                            "fix the path or add the file"))
    return findings
