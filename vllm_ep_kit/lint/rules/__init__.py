"""One module per lint rule; each exposes ``RULE`` and ``check(ctx) -> list[Finding]``."""

from vllm_ep_kit.lint.rules import (
    dead_key,
    dependencies,
    flag_spelling,
    gated_branches,
    gpu_count,
    listed_not_run,
    missing_test,
    paths_exist,
    schema,
    stale_dependency,
    uncovered,
    unique_labels,
)

ALL_RULES = [
    schema,
    dead_key,
    unique_labels,
    gpu_count,
    paths_exist,
    stale_dependency,
    uncovered,
    listed_not_run,
    missing_test,
    flag_spelling,
    gated_branches,
    dependencies,
]
RULE_NAMES = [rule.RULE for rule in ALL_RULES]
