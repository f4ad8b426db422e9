"""Each command's exit status, decided from its result alone.

0: everything asked for ran and passed; 1: something failed (one case of many is
enough); 2: a bad argument (argparse and the commands' own checks, before anything runs);
3: lint-ci's own error.  The command line prints; these functions only decide, so every
kind of failure a result can carry is tested here, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

PASSED = 0
FAILED = 1
BAD_ARGUMENT = 2
INTERNAL_ERROR = 3


class _Verdict(Protocol):
    passed: bool


def check(results: Iterable[_Verdict]) -> int:
    """``check``: failed when any case failed, on any backend and layout."""
    return FAILED if any(not r.passed for r in results) else PASSED


def failed_points(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The bench points whose round-trip check failed."""
    return [row for row in report["results"] if row["check"] == "FAILED"]


def bench(report: Mapping[str, Any]) -> int:
    """``bench``: failed when a point failed its round-trip check, or a backend's ranks
    failed before measuring all of its points (two kinds; either alone fails)."""
    return FAILED if failed_points(report) or report["failures"] else PASSED


def lint_ci(findings: Sequence[object]) -> int:
    """``lint-ci``: failed on any finding left after the baseline."""
    return FAILED if findings else PASSED


def bundle(manifest: Mapping[str, Any]) -> int:
    """``bundle``: failed when any wheel could not be fetched (the bundle is incomplete)."""
    return FAILED if manifest["wheel_failures"] else PASSED


def preflight(report: Mapping[str, Any]) -> int:
    """``preflight``: failed when any check says the command will fail (risky passes)."""
    return FAILED if any(c["verdict"] == "will fail" for c in report["checks"]) else PASSED


def patches_export(report: Mapping[str, Any]) -> int:
    """``patches export``: failed when a hotfix cannot be applied, or (``--check``) a fix is
    still needed; written and not needed pass."""
    return (
        FAILED
        if any(row["status"] in ("cannot apply", "needed") for row in report["rows"])
        else PASSED
    )
