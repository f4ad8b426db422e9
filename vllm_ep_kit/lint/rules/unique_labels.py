"""Step labels and keys are unique within a pipeline: Buildkite and humans key on them.

A pipeline is one ``ci_config*.yaml`` (its ``job_dirs``); the same label in the
Intel pipeline and the main one is no clash.  Mirror blocks share their step's label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "unique-labels"


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for pipeline, areas in ctx.pipelines.items():
        seen: dict = {}
        for step in ctx.steps:
            if step.mirror or step.area.display not in areas:
                continue
            for field in ("label", "key"):
                value = step.raw.get(field)
                if value is None:
                    continue
                if step.generator.gpu_key == "num_gpus" and field == "label":
                    # the AMD template names a job "<agent_pool>: <label>"
                    value = f"{step.raw.get('agent_pool') or ''}: {value}"
                if (field, value) in seen:
                    findings.append(
                        step.finding(
                            (field,),
                            RULE,
                            f"{field} {value!r} is already used at "
                            f"{seen[(field, value)]}"
                            + (f" (pipeline {pipeline})" if pipeline else ""),
                            f"rename one of the two steps' {field}",
                        )
                    )
                else:
                    seen[(field, value)] = f"{step.area.display}:{step.line(field)}"
    return list({(f.path, f.line, f.message): f for f in findings}.values())
