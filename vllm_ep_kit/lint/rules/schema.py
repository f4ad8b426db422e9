"""Every test-area file matches the JSON schema of vLLM's test-area format."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jsonschema

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.area import load_schema

if TYPE_CHECKING:
    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "schema"


def check(ctx: Pipeline) -> list[Finding]:
    validator = jsonschema.Draft202012Validator(load_schema())
    findings = []
    for area in ctx.areas:
        # a path may mix int and str keys (``1:`` and ``FOO:`` under one mapping): compare as text
        errors = sorted(validator.iter_errors(area.data), key=lambda e: [str(k) for k in e.path])
        if area.display == conventions.AMD_PIPELINE:  # the AMD template's file has no group
            errors = [e for e in errors if not (e.validator == "required" and not e.path)]
        for error in errors:
            keys = tuple(error.absolute_path)
            where = "/".join(str(k) for k in keys) or "(top level)"
            findings.append(
                area.finding(
                    keys, RULE, f"{where}: {error.message}", "see vllm_ep_kit/lint/schema.json"
                )
            )
    return findings
