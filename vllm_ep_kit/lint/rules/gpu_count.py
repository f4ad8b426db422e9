"""A command needs no more GPUs than its step's job gets.

The job gets ``num_devices`` GPUs (1 when absent, also on the default pool; one
for an ``h200_18gb``/``h200_35gb`` slice); a vLLM command asking for more (tensor
x data x pipeline parallel sizes: one GPU per rank) fails or waits on hardware the
step never has.  Each command of a line (``&&``, ``;``, ``|``, ``&``) is judged on its
own, a size given twice counts its last value (as argparse reads it), and vLLM's
``--tensor_parallel_size`` spelling is its ``--tensor-parallel-size``.  ``torchrun
--nproc-per-node`` is not judged (gloo tests run more
processes than GPUs on purpose), nor are CPU steps or multi-node steps (their
sizes span nodes).

Tests marked for more GPUs (vLLM's ``@multi_gpu_test(num_gpus=N)`` /
``multi_gpu_only``, this kit's ``@pytest.mark.gpus(N)``, read with ``ast``) skip on a
smaller step; that is a finding only when no non-optional step with enough GPUs
runs the file (then those tests run in no automatic build).
"""

from __future__ import annotations

import ast
import math
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.sources import python_tree

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vllm_ep_kit.lint.area import Finding
    from vllm_ep_kit.lint.pipeline import Pipeline

RULE = "gpu-count"
SIZES = {  # flag -> which parallel size it sets
    "--tensor-parallel-size": "tp",
    "-tp": "tp",
    "--data-parallel-size": "dp",
    "-dp": "dp",
    "--pipeline-parallel-size": "pp",
    "-pp": "pp",
}


def _commands(text: str) -> list[list[str]]:
    """The words of each command of a shell line, split at its control operators."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unclosed quote: the words as written
        words = text.partition("#")[0].split()
    commands: list[list[str]] = [[]]
    for word in words:
        if not set(word) - set(lexer.punctuation_chars):  # &&, ;, |, &, a redirection
            commands.append([])
        else:
            commands[-1].append(word)
    return commands


def _command_gpus(words: list[str]) -> tuple[int, str]:
    sizes: dict[str, int] = {}  # tp/dp/pp -> the number the command gives it last
    for pos, word in enumerate(words):
        flag, _, value = word.partition("=")
        kind = SIZES.get(flag.replace("_", "-") if flag.startswith("--") else flag)
        if kind is None:
            continue
        if not value and pos + 1 < len(words):
            value = words[pos + 1]
        if re.fullmatch(r"\d+", value):
            sizes[kind] = int(value)
    need = math.prod(sizes.values())
    return need, " x ".join(f"{k.upper()}={v}" for k, v in sorted(sizes.items()))


def needed_gpus(text: str) -> tuple[int, str]:
    """(GPUs the line's neediest command asks for, which flags say so); (1, "") when no
    command names a size."""
    return max((_command_gpus(words) for words in _commands(text)), key=lambda need: need[0])


MARKERS = ("multi_gpu_test", "multi_gpu_only", "gpus")


def _gpus_of_decorator(node: ast.expr) -> int | None:
    """The GPUs a decorator asks for; None when it is no GPU mark with a number."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in MARKERS:
        return None
    keyword = (kw.value for kw in node.keywords if kw.arg == "num_gpus")
    value = next(keyword, node.args[0] if node.args else None)
    if isinstance(value, ast.Constant) and isinstance(value.value, int):
        return value.value
    return None


def _marks(node: ast.AST) -> list[int]:
    decorators = getattr(node, "decorator_list", [])
    return [n for n in map(_gpus_of_decorator, decorators) if n is not None]


def marked_gpus(path: Path) -> dict[str, int]:
    """Test name -> the most GPUs its marks ask for (only tests that carry such a mark): a
    module's functions, and a class's methods under the class's name (a mark on the class
    counts for each of them)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    if not any(marker in text for marker in MARKERS):
        return {}  # no mark: not worth parsing (most test files of a vLLM-sized tree)
    tree = python_tree(path)
    found = {}
    for node in tree.body if tree is not None else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _marks(node):
            found[node.name] = max(_marks(node))
        elif isinstance(node, ast.ClassDef):
            needs = _marks(node) + [n for item in node.body for n in _marks(item)]
            if needs:
                found[node.name] = max(needs)
    return found


def _selected_test(selector: str) -> str:
    """The test a pytest ``::`` selector names ('' for the whole file)."""
    return selector.split("::")[0].split("[")[0]


def _named_files(step) -> Iterator[tuple[int, str, str]]:
    """(command index, repository path, pytest selector) of each file the step's commands name."""
    for info in step.parsed():
        for pos, repo in enumerate(info.repo_files):
            yield info.index, repo, info.selectors[pos]


def _runs_test(step, repo: str, test: str) -> bool:
    """Whether ``step`` runs ``repo`` whole, or that test of it."""
    return any(
        path == repo and (not selector or _selected_test(selector) == test)
        for _, path, selector in _named_files(step)
    )


def _unmet_marks(ctx, step) -> list:
    """Findings for tests marked for more GPUs than the step has, that no bigger
    non-optional step runs."""
    findings = []
    for index, repo, selector in _named_files(step):
        if not repo.endswith(".py"):
            continue
        name = _selected_test(selector)
        marks = {k: v for k, v in marked_gpus(ctx.root / repo).items() if not name or k == name}
        if not marks:
            continue
        test = max(marks, key=lambda k: marks[k])
        need = marks[test]
        # a non-optional step with enough GPUs runs it: this one, when it has them
        if any(
            not other.optional and other.gpus >= need and _runs_test(other, repo, test)
            for other in ctx.steps
        ):
            continue
        findings.append(
            step.finding(
                ("commands", index),
                RULE,
                f"step {step.label!r} gets {step.gpus} GPU(s) but {repo}::{test} is marked for "
                f"{need}, and no non-optional step with {need} runs it: it skips in every "
                "automatic build",
                f"run {repo} in a step with `num_devices: {need}`",
            )
        )
    return findings


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        if step.device in ctx.generator.cpu_devices or (step.raw.get("num_nodes") or 1) > 1:
            continue
        if not step.optional:
            findings += _unmet_marks(ctx, step)
        for index, text in enumerate(step.commands):
            need, why = needed_gpus(text)
            if need > step.gpus:
                findings.append(
                    step.finding(
                        ("commands", index),
                        RULE,
                        f"step {step.label!r} gets {step.gpus} GPU(s) but a command needs {need} "
                        f"({why})",
                        f"set `num_devices: {need}` or run it with fewer ranks",
                    )
                )
    return findings
