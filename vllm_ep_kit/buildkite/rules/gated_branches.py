"""Every env-gated branch of a script that CI runs is enabled by at least one step.

Upstream moved gemma-3's sliding-window configs into an array run only when an
``SW_ATTN``-style variable is set, and no step set it: gemma-3 silently left
CI.  Here: for each script a step runs, every variable tested in an
``if``/``elif``/``[[ ]]`` condition (and not assigned a fixed value by the
script) must be set to a true value by some step that runs that script.
"""

from __future__ import annotations

import re

from vllm_ep_kit.buildkite import conventions
from vllm_ep_kit.buildkite.area import Finding

RULE = "gated-branch"
CONDITION = re.compile(r"^\s*(if|elif|while)\b|^\s*\[\[.*\]\]\s*(&&|\|\|)")
VARIABLE = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
FIXED_ASSIGNMENT = re.compile(r"^\s*(?:readonly\s+|declare\s+\S+\s+)?([A-Z][A-Z0-9_]*)=(?!\"?\$\{\1)")
FALSY = {"", "0", "false", "False", "no", "off"}
BRANCH_END = re.compile(r"^\s*(elif|else|fi)\b")
# A branch that chooses what runs: it fills an array of configs or runs tests.  Knobs
# (``if [[ -n $DISK_USAGE_THRESHOLD ]]``, a push or cache switch) do not cut coverage.
SELECTS_TESTS = re.compile(r"\+?=\(|\[@\]|\bpytest\b")


def selects_what_runs(lines: list[str], start: int, reach: int = 15) -> bool:
    """Whether the branch opened at ``lines[start]`` fills a config array or runs tests."""
    for offset, line in enumerate(lines[start:start + reach]):
        if offset and BRANCH_END.match(line):
            return False
        if SELECTS_TESTS.search(line):
            return True
    return False


def gating_variables(text: str) -> dict[str, tuple[int, str | None]]:
    """Variable -> (first line of a condition testing it, the value it is compared to).

    Only conditions whose branch chooses what runs count (``selects_what_runs``).
    Fixed assignments (``X=5``, not ``X=${X:-0}``) are not gates.  The value is
    known when the condition reads ``"$X" == VALUE``; then only that value opens it.
    """
    lines = text.splitlines()
    fixed = {m.group(1) for line in lines if (m := FIXED_ASSIGNMENT.match(line))}
    found: dict[str, tuple[int, str | None]] = {}
    for number, line in enumerate(lines, start=1):
        if CONDITION.search(line) and selects_what_runs(lines, number - 1):
            for name in VARIABLE.findall(line):
                if name in fixed or name in found:
                    continue
                compared = re.search(r"\$\{?" + name + r"\}?\"?\s*==?\s*\"?([\w.-]+)", line)
                found[name] = (number, compared.group(1) if compared else None)
    return found


def opens(value: str, required: str | None) -> bool:
    return value == required if required is not None else value not in FALSY


def check(ctx) -> list:
    settings: dict[str, list[dict[str, str]]] = {}  # script -> env of each command running it
    for step in ctx.steps:
        for info in step.parsed():
            for path in info.repo_files:
                if path.endswith(".sh"):
                    settings.setdefault(path, []).append(info.env)
    findings = []
    for script, envs in sorted(settings.items()):
        file = ctx.root / script
        if not file.exists():
            continue  # path-exists reports it
        gates = gating_variables(file.read_text(errors="replace"))
        for name, (line, required) in sorted(gates.items(), key=lambda item: item[1][0]):
            if conventions.set_by_environment(name):
                continue  # set by the image or the agent, not by a step
            if any(name in env and opens(env[name], required) for env in envs):
                continue
            seen = sorted({env[name] for env in envs if name in env})
            why = (f"steps set it only to {', '.join(seen)}, the script tests == {required}"
                   if seen else f"no step that runs {script} sets {name}")
            findings.append(Finding(
                script, line, RULE, f"branch gated by {name} is never enabled: {why}",
                f"add a step (or command) running `{name}={required or 1} bash {script}`"))
    return findings
