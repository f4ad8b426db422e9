"""Every env-gated branch of a script that CI runs is enabled by at least one step.

Upstream moved gemma-3's sliding-window configs into an array run only when an
``SW_ATTN``-style variable is set, and no step set it: gemma-3 silently left
CI.  Here: for each script a step runs, every variable tested in an
``if``/``elif``/``[[ ]]`` condition (and not assigned a fixed value by the
script) must be set to a true value by some step that runs that script, or by a
script that runs it: ``A=1 bash b.sh``, and config arrays handed over with ``env
"${cfg_parts[@]}" bash "${SCRIPT}"`` (each element of the caller's arrays is one set
of variables), followed three calls deep.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.area import Finding
from vllm_ep_kit.lint.commands import ASSIGNMENT

if TYPE_CHECKING:
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "gated-branch"
CONDITION = re.compile(r"^\s*(if|elif|while)\b|^\s*\[\[.*\]\]\s*(&&|\|\|)")
VARIABLE = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
FIXED_ASSIGNMENT = re.compile(
    r"^\s*(?:readonly\s+|declare\s+\S+\s+)?([A-Z][A-Z0-9_]*)=(?!\"?\$\{\1)"
)
FALSY = {"", "0", "false", "False", "no", "off"}
BRANCH_END = re.compile(r"^\s*(elif|else|fi)\b")
# A branch that chooses what runs: it takes the elements of one of the script's own
# config arrays (``configs=("${sw_attn_configs[@]}")``) or runs pytest.  Knobs (extra
# server flags, an attention backend, a cache switch, a model override) do not cut coverage.
CONFIG_ARRAY = re.compile(r"^\s*(?:local\s+-a\s+|declare\s+-a\s+)?([A-Za-z_]\w*)=\((?!\s*\))")
RUNS_TESTS = re.compile(r"\bpytest\b")


def config_arrays(lines: list[str]) -> set[str]:
    """Names of the non-empty array literals the script defines."""
    return {m.group(1) for line in lines if (m := CONFIG_ARRAY.match(line))}


def selects_what_runs(lines: list[str], start: int, arrays: set[str], reach: int = 15) -> bool:
    """Whether the branch opened at ``lines[start]`` takes a config array or runs tests."""
    for offset, line in enumerate(lines[start : start + reach]):
        if offset and BRANCH_END.match(line):
            return False
        used = set(re.findall(r"\$\{(\w+)\[@\]\}", line))
        if used & arrays or RUNS_TESTS.search(line):
            return True
    return False


def gating_variables(text: str) -> dict[str, tuple[int, str | None]]:
    """Variable -> (first line of a condition testing it, the value it is compared to).

    Only conditions whose branch chooses what runs count (``selects_what_runs``).
    Fixed assignments (``X=5``, not ``X=${X:-0}``) are not gates.  The value is
    known when the condition reads ``"$X" == VALUE``; then only that value opens it.
    """
    lines = text.splitlines()
    arrays = config_arrays(lines)
    fixed = {m.group(1) for line in lines if (m := FIXED_ASSIGNMENT.match(line))}
    found: dict[str, tuple[int, str | None]] = {}
    for number, line in enumerate(lines, start=1):
        if CONDITION.search(line) and selects_what_runs(lines, number - 1, arrays):
            for name in VARIABLE.findall(line):
                if name in fixed or name in found:
                    continue
                compared = re.search(r"\$\{?" + name + r"\}?\"?\s*==?\s*\"?([\w.-]+)", line)
                found[name] = (number, compared.group(1) if compared else None)
    return found


def opens(value: str, required: str | None) -> bool:
    return value == required if required is not None else value not in FALSY


ASSIGNED_PATH = re.compile(
    r"^\s*(?:local\s+|readonly\s+)?([A-Za-z_]\w*)=[\"']?([\w./-]+\.sh)[\"']?\s*$"
)
# the script a call runs: a variable holding its path, or the path
# a script run or sourced: bash/sh/source are words; ``.`` starts a command (\b cannot
# precede it)
CALL = re.compile(
    r"(?:\b(?:bash|sh|source)|(?:^|(?<=[\s;&|(]))\.)\s+[\"']?(?:\$\{?(\w+)\}?|([\w./-]+\.sh))[\"']?"
)
ARRAY_START = re.compile(r"^\s*(?:local\s+-a\s+|declare\s+-a\s+)?\w+=\(\s*$")


def _assignments(text: str) -> dict[str, str]:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        words = text.split()
    return {m.group(1): m.group(2) for w in words if (m := ASSIGNMENT.match(w))}


def _array_elements(lines: list[str]) -> list[str]:
    """The elements of every multi-line array literal ``name=( ... )`` of a script."""
    elements, inside = [], False
    for line in lines:
        if not inside:
            inside = ARRAY_START.match(line) is not None
            continue
        inside = line.strip() != ")"
        if inside:
            try:
                elements.extend(shlex.split(line, comments=True))
            except ValueError:
                continue
    return elements


def _resolve(root: Path, caller: str, name: str) -> str | None:
    """A script path named in ``caller`` as a repository path (tried from the root, from
    tests/ where vLLM's steps run, and from the caller's folder)."""
    for base in (Path(), Path("tests"), Path(caller).parent):
        candidate = (base / name).as_posix()
        if (root / candidate).is_file():
            return candidate
    return None


def calls(root: Path, script: str) -> list[tuple[str, dict[str, str]]]:
    """(script it runs, variables it sets for that run) for each call in ``script``."""
    try:
        lines = (root / script).read_text(errors="replace").splitlines()
    except OSError:
        return []
    paths = {m.group(1): m.group(2) for line in lines if (m := ASSIGNED_PATH.match(line))}
    configs = [_assignments(element) for element in _array_elements(lines)]
    found: list[tuple[str, dict[str, str]]] = []
    for line in lines:
        for match in CALL.finditer(line):
            variable, literal = match.groups()
            name = paths.get(variable) if variable else literal
            callee = _resolve(root, script, name) if name else None
            if callee is None or callee == script:
                continue
            inline = _assignments(line[: match.start()])
            if "[@]}" in line[: match.start()]:  # env "${cfg_parts[@]}" bash ...
                found.extend((callee, {**inline, **cfg}) for cfg in configs or [{}])
            else:
                found.append((callee, inline))
    return found


def script_settings(ctx) -> dict[str, list[dict[str, str]]]:
    """Script -> the variables of each command (a step's, or a calling script's) running it."""
    settings: dict[str, list[dict[str, str]]] = {}
    for step in ctx.steps:
        for info in step.parsed():
            for path in info.repo_files:
                if path.endswith(".sh"):
                    settings.setdefault(path, []).append(info.env)
    frontier = list(settings)
    for _ in range(3):
        added = []
        for script in frontier:
            for callee, env in calls(ctx.root, script):
                for outer in settings[script]:
                    settings.setdefault(callee, []).append({**outer, **env})
                added.append(callee)
        frontier = list(dict.fromkeys(added))
    return settings


def check(ctx: Pipeline) -> list[Finding]:
    settings = script_settings(ctx)
    findings = []
    for script, envs in sorted(settings.items()):
        file = ctx.root / script
        if not file.exists():
            continue  # path-exists reports it
        gates = gating_variables(file.read_text(errors="replace"))
        for name, (line, required) in gates.items():  # in the order of their lines
            if conventions.set_by_environment(name):
                continue  # set by the image or the agent, not by a step
            if any(name in env and opens(env[name], required) for env in envs):
                continue
            seen = sorted({env[name] for env in envs if name in env})
            why = (
                f"steps set it only to {', '.join(seen)}, the script tests == {required}"
                if seen
                else f"no step that runs {script} sets {name}"
            )
            findings.append(
                Finding(
                    script,
                    line,
                    RULE,
                    f"branch gated by {name} is never enabled: {why}",
                    f"add a step (or command) running `{name}={required or 1} bash {script}`",
                )
            )
    return findings
