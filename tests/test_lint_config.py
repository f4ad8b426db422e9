"""`make lint` can fail: the ruff rules it selects refuse the faults they are chosen for,
planted in a copy of a backend module (the unplanted copy is clean)."""

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
