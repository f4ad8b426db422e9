"""A command needs no more GPUs than its step's job sees.

What a job sees depends on its runner (conventions.Generator.visible_gpus): a Kubernetes
pod (``h100``, ``a100``, ``b200-k8s``, every AMD step) gets exactly the GPUs the step asks
for; the default pool's Docker runners pass the whole runner (``gpu_4_queue``, chosen for
2 or 4 devices, has 4; ``gpu_1_queue`` 1); an ``h200_18gb``/``h200_35gb`` slice is one
GPU; other devices give the whole runner, whose size the tree does not say, so their steps
are not judged.  A vLLM command asking for more (tensor x data x pipeline parallel sizes:
one GPU per rank) fails or waits on hardware the step never has; so does ``torchrun
--nproc-per-node`` beyond what a pod gets (elsewhere gloo tests oversubscribe on purpose).  Each command of a line (``&&``, ``;``, ``|``, ``&``) is judged on its
own, a size given twice counts its last value (as argparse reads it), and vLLM's
``--tensor_parallel_size`` spelling is its ``--tensor-parallel-size``.  CPU steps and
multi-node steps (their sizes span nodes) are not judged.

Tests marked for more GPUs (vLLM's ``@multi_gpu_test(num_gpus=N)`` /
``multi_gpu_only``, this kit's ``@pytest.mark.gpus(N)``, read with ``ast``) skip on a
smaller step; that is a finding only when no step that may see enough GPUs runs
them (by name, folder or glob, less what its ``-k`` surely leaves out; an optional step
counts, as nightly builds run it).
"""

from __future__ import annotations

import ast
import math
import posixpath
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_ep_kit.lint.keywords import leaves_out
from vllm_ep_kit.lint.rules.listed_not_run import glob_runs
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


def _named_files(step) -> Iterator[tuple[int, str, str, str]]:
    """(command index, repository path, pytest selector, its ``-k``) of each file the
    step's commands name."""
    for info in step.parsed():
        for pos, repo in enumerate(info.repo_files):
            yield info.index, repo, info.selectors[pos], info.keyword(repo)


def _kept(keyword: str, repo: str, test: str) -> bool:
    """Whether a ``-k keyword`` may keep ``test`` of ``repo`` (its names: the test, the
    file and the folders above it; a word of ``-k`` holds no ``/``, so the path whole
    stands for them)."""
    return not keyword or not leaves_out(keyword, [test, repo])


def _runs_file(step, repo: str, test: str) -> bool:
    """Whether ``step`` runs that test of ``repo``: the file whole or that test, a folder
    holding it or a glob matching it (less what its ``--ignore`` and ``-k`` leave out)."""
    for info in step.parsed():
        if any(glob_runs(left, repo) for left in info.ignored):
            continue
        for pos, path in enumerate(info.repo_files):
            selector = info.selectors[pos]
            if not _kept(info.keyword(path), repo, test):
                continue
            if path == repo and (not selector or _selected_test(selector) == test):
                return True
            if path != repo and path and glob_runs(path, repo):
                return True
        for path in info.run_paths:
            if glob_runs(path, repo) and _kept(info.keyword(path), repo, test):
                return True
    return False


def _enough(step, need: int) -> bool:
    """The step's job may see ``need`` GPUs (a whole runner of unknown size may)."""
    visible = step.visible_gpus
    return visible is None or visible >= need


def _unmet_marks(ctx, step) -> list:
    """Findings for tests marked for more GPUs than the step's job sees, that no step whose
    job may see enough runs (an optional step counts: nightly builds run it)."""
    findings = []
    for index, repo, selector, keyword in _named_files(step):
        if not repo.endswith(".py"):
            continue
        name = _selected_test(selector)
        marks = {
            k: v
            for k, v in marked_gpus(ctx.root / repo).items()
            if (not name or k == name) and _kept(keyword, repo, k)
        }
        if not marks:
            continue
        test = max(marks, key=lambda k: marks[k])
        need = marks[test]
        if any(_enough(other, need) and _runs_file(other, repo, test) for other in ctx.steps):
            continue
        findings.append(
            step.finding(
                ("commands", index),
                RULE,
                f"step {step.label!r} gets {step.visible_gpus} GPU(s) but {repo}::{test} is "
                f"marked for {need}, and no step with {need} runs it: it skips in every build",
                f"run {repo} in a step with `num_devices: {need}`",
            )
        )
    return findings


def torchrun_processes(text: str) -> int:
    """The processes per node the line's ``torchrun`` asks for (0 when none)."""
    most = 0  # pragma: no mutate (equivalent: a command needs 1 GPU at least, so 1 adds none)
    for words in _commands(text):
        if not words or posixpath.basename(words[0]) != "torchrun":
            continue
        for pos, word in enumerate(words):
            flag, _, value = word.partition("=")
            if flag.replace("_", "-") != "--nproc-per-node":
                continue
            if not value and pos + 1 < len(words):
                value = words[pos + 1]
            if re.fullmatch(r"\d+", value):
                most = max(most, int(value))
    return most


def check(ctx: Pipeline) -> list[Finding]:
    findings = []
    for step in ctx.steps:
        if step.device in step.generator.cpu_devices or (step.raw.get("num_nodes") or 1) > 1:
            continue
        visible = step.visible_gpus
        if not visible:
            continue  # no GPU (a CPU job), or the whole runner of a device of unwritten size
        findings += _unmet_marks(ctx, step)
        for index, text in enumerate(step.commands):
            need, why = needed_gpus(text)
            procs = 0  # pragma: no mutate (equivalent: need >= 1)
            if step.generator.exact(step.raw):
                procs = torchrun_processes(text)
            if procs > max(need, visible):
                need, why = procs, f"torchrun --nproc-per-node={procs} on a pod that gets exactly "
                why += f"{visible}"
            if need > visible:
                findings.append(
                    step.finding(
                        ("commands", index),
                        RULE,
                        f"step {step.label!r} gets {visible} GPU(s) but a command needs {need} "
                        f"({why})",
                        f"set `{step.generator.gpu_key}: {need}` or run it with fewer ranks",
                    )
                )
    return findings
