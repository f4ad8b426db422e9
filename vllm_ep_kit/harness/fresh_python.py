"""Run Python code in a fresh interpreter and read back the JSON it prints last.

A fresh interpreter is how we observe things that the current process must not
be changed by: which modules an import pulls in, what a patch does at start-up,
what another vLLM release's code does (``python_path`` goes first on its path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


class FreshPythonError(RuntimeError):
    """The code exited non-zero or printed no JSON line."""


def run_json(
    code: str, *, env: dict[str, str] | None = None, python_path=(), timeout_s: float = 300.0
) -> Any:
    """Execute ``code``; return ``json.loads`` of the last stdout line that parses."""
    full_env = {**os.environ, **(env or {})}
    if python_path:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [*map(str, python_path), *filter(None, [full_env.get("PYTHONPATH")])]
        )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout_s,
    )
    if result.returncode:
        raise FreshPythonError(f"exit code {result.returncode}: {result.stderr[-3000:]}")
    for line in reversed(result.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise FreshPythonError(f"no JSON line in the output: {result.stdout[-2000:]}")
