"""A command needs no more GPUs than its step's job gets.

The job gets ``num_devices`` GPUs (1 when absent, also on the default pool; one
for an ``h200_18gb``/``h200_35gb`` slice); a vLLM command asking for more (tensor
x data x pipeline parallel sizes: one GPU per rank) fails or waits on hardware the
step never has.  ``torchrun --nproc-per-node`` is not judged (gloo tests run more
processes than GPUs on purpose), nor are CPU steps or multi-node steps (their
sizes span nodes).
"""

from __future__ import annotations

import re
import shlex

from vllm_ep_kit.buildkite import conventions

RULE = "gpu-count"
SIZES = {  # flag -> which parallel size it sets
    "--tensor-parallel-size": "tp", "-tp": "tp", "--data-parallel-size": "dp", "-dp": "dp",
    "--pipeline-parallel-size": "pp", "-pp": "pp",
}


def needed_gpus(text: str) -> tuple[int, str]:
    """(GPUs the command line asks for, which flags say so); 0 when it names none."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        words = text.split()
    sizes: dict[str, int] = {}
    for pos, word in enumerate(words):
        flag, _, value = word.partition("=")
        if flag not in SIZES:
            continue
        if not value and pos + 1 < len(words):
            value = words[pos + 1]
        if re.fullmatch(r"\d+", value or ""):
            sizes[SIZES[flag]] = max(sizes.get(SIZES[flag], 0), int(value))
    parallel = {k: v for k, v in sizes.items() if k in ("tp", "dp", "pp")}
    if not parallel:
        return 0, ""
    total = 1
    for value in parallel.values():
        total *= value
    return total, " x ".join(f"{k.upper()}={v}" for k, v in sorted(parallel.items()))


def check(ctx) -> list:
    findings = []
    for step in ctx.steps:
        if step.device in conventions.CPU_DEVICES or (step.raw.get("num_nodes") or 1) > 1:
            continue
        for index, text in enumerate(step.commands):
            need, why = needed_gpus(text)
            if need > step.gpus:
                findings.append(step.finding(
                    ("commands", index), RULE,
                    f"step {step.label!r} gets {step.gpus} GPU(s) but a command needs {need} "
                    f"({why})", f"set `num_devices: {need}` or run it with fewer ranks"))
    return findings
