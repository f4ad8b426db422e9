"""`make lint` can fail: the ruff rules it selects refuse the faults they are chosen for,
planted in a copy of a backend module (the unplanted copy is clean), and mypy refuses a
wrong type given to or returned through a public interface (the right types pass)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
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
from vllm_ep_kit.harness import run_ranks


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
# Libraries none of these interfaces names: left unread, so a cold cache costs about 15 s
# here instead of 80 (vLLM pulls in transformers and openai, thousands of modules).
UNREAD = ["vllm", "vllm.*", "flashinfer", "flashinfer.*", "transformers.*", "openai.*"]


def plant_config(folder: Path) -> Path:
    """The project's mypy configuration, as a user module meets it: the package's own
    modules are read for their types but their findings are `make lint`'s (silent), and
    the libraries in ``UNREAD`` are not read at all."""
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    mypy.pop("files")
    overrides = [
        *mypy.pop("overrides"),
        {"module": ["vllm_ep_kit.*"], "follow_imports": "silent"},
        {"module": UNREAD, "follow_imports": "skip"},
    ]
    lines = ["[tool.mypy]", *(f"{key} = {json.dumps(value)}" for key, value in mypy.items())]
    for override in overrides:
        lines.append("[[tool.mypy.overrides]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in override.items()]
    config = folder / "pyproject.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def plant_module(plant: str) -> str:
    """The file name of ``plant``'s module."""
    return f"typed_use_{plant.replace('-', '_')}.py"


@pytest.fixture(scope="module")
def mypy_on_plants(tmp_path_factory) -> str:
    """One mypy run over a module per plant (each named after it); its report."""
    folder = tmp_path_factory.mktemp("typed_use")
    for plant, (fields, _) in TYPE_PLANTS.items():
        module = folder / plant_module(plant)
        module.write_text(TYPED_USE.format(name="PlantedTransport", **fields))
    result = subprocess.run(
        [
            str(MYPY),
            "--config-file",
            str(plant_config(folder)),
            "--cache-dir",
            str(folder / "cache"),
            *sorted(str(p) for p in folder.glob("typed_use_*.py")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    # a run that failed before it checked anything must not read as "no finding"
    assert f"(checked {len(TYPE_PLANTS)} source files)" in result.stdout, (
        result.stdout + result.stderr
    )
    assert result.returncode == (1 if any(m for _, m in TYPE_PLANTS.values()) else 0)
    return result.stdout


@pytest.mark.parametrize("plant", TYPE_PLANTS)
def test_mypy_refuses_a_wrong_type_on_a_public_interface(mypy_on_plants, plant):
    """A transport whose combine returns the wrong type, or run_ranks given its world size
    as text: mypy, with this project's configuration, finds each in its own module; the
    same module typed right has no finding."""
    _, message = TYPE_PLANTS[plant]
    findings = [line for line in mypy_on_plants.splitlines() if f"{plant_module(plant)}:" in line]
    if message is None:
        assert findings == [], mypy_on_plants
    else:
        assert any(message in line for line in findings), mypy_on_plants
