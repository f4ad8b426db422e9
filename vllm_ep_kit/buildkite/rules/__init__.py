"""One module per lint rule; each exposes ``RULE`` and ``check(ctx) -> list[Finding]``."""

from vllm_ep_kit.buildkite.rules import (
    dependencies,
    flag_spelling,
    gated_branches,
    gpu_steps,
    paths_exist,
    schema,
    unique_labels,
)

ALL_RULES = [schema, unique_labels, gpu_steps, paths_exist, flag_spelling, gated_branches,
             dependencies]
