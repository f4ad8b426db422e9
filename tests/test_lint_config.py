"""`make lint` can fail: the ruff rules it selects refuse the faults they are chosen for,
planted in a copy of a backend module (the unplanted copy is clean), and mypy refuses a
wrong type given to or returned through a public interface (the right types pass)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"
MODULE = ROOT / "vllm_ep_kit" / "backends" / "agrs.py"
FUTURE = "from __future__ import annotations\n"


def ruff_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUFF), "check", "--config", str(ROOT / "pyproject.toml"), "--no-cache", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


PLANTS = {
    "unused-import": ("import json\n", "F401"),
    "blind-except": (
        "\n\ndef _probe() -> None:\n    try:\n        pass\n    except Exception:\n        pass\n",
        "BLE001",
    ),
}


@pytest.mark.parametrize("plant", PLANTS)
def test_ruff_refuses_a_fault_planted_in_backends(tmp_path, plant):
    text, rule = PLANTS[plant]
    source = MODULE.read_text()
    assert source.count(FUTURE) == 1
    clean = tmp_path / "clean" / MODULE.name
    clean.parent.mkdir()
    clean.write_text(source)
    assert ruff_check(clean).returncode == 0, ruff_check(clean).stdout
    planted = tmp_path / "planted" / MODULE.name
    planted.parent.mkdir()
    planted.write_text(
        source.replace(FUTURE, FUTURE + text) if plant == "unused-import" else source + text
    )
    result = ruff_check(planted)
    assert result.returncode == 1, result.stdout
    assert rule in result.stdout, result.stdout


MYPY = Path(sys.executable).parent / "mypy"
TYPED_USE = """from __future__ import annotations

import torch

from vllm_ep_kit.backends.transport import Dispatched, Transport
from vllm_ep_kit.testing import run_ranks


class {name}(Transport):
    def combine(self, dispatched: Dispatched, partial: torch.Tensor) -> {returns}:
        return {value}


def start() -> None:
    run_ranks(print, {world})
"""
TYPE_PLANTS = {
    "clean": ({"returns": "torch.Tensor", "value": "partial", "world": "2"}, None),
    "override-returns-wrong-type": (
        {"returns": "int", "value": "0", "world": "2"},
        'Return type "int" of "combine" incompatible with return type "Tensor" in supertype',
    ),
    "world-size-as-text": (
        {"returns": "torch.Tensor", "value": "partial", "world": '"2"'},
        'Argument 2 to "run_ranks" has incompatible type "str"; expected "int"',
    ),
}


@pytest.mark.parametrize("plant", TYPE_PLANTS)
def test_mypy_refuses_a_wrong_type_on_a_public_interface(tmp_path, plant):
    """A transport whose combine returns the wrong type, or run_ranks given its world size
    as text: mypy, with this project's configuration (and its cache: a cold one reads
    torch and vLLM for a minute and more), fails on each; the same module typed right
    passes."""
    fields, message = TYPE_PLANTS[plant]
    module = tmp_path / f"typed_use_{plant.replace('-', '_')}.py"
    module.write_text(TYPED_USE.format(name="PlantedTransport", **fields))
    result = subprocess.run(
        [str(MYPY), "--config-file", str(ROOT / "pyproject.toml"), str(module)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if message is None:
        assert result.returncode == 0, result.stdout
    else:
        assert result.returncode == 1, result.stdout
        assert message in result.stdout, result.stdout
