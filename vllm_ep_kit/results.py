"""The result of one dispatch + combine case on one rank, or merged over ranks.

Every rank function that checks a case (``check``, the manager round trips,
the loopback and real backends alike) returns these, so the CLI, the tests
and the merge over ranks read one shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class CaseResult:
    backend: str
    layout: str
    dtype: str
    tokens: str
    dispatch_exact: bool | None  # None: not observable separately (checked via combine)
    max_error: float
    passed: bool
    seconds: float
    note: str = ""

    def as_dict(self) -> dict:
        """JSON-ready (a case that never produced an output has no error: null)."""
        data = asdict(self)
        if not math.isfinite(data["max_error"]):
            data["max_error"] = None
        return data


def merge_case_rows(backend: str, rows: list[CaseResult]) -> CaseResult:
    """One case as every rank saw it: it passes only if it passed on every rank; the error
    is the largest and the note the first failing rank's."""
    failing = [r for r in rows if not r.passed]
    return CaseResult(
        backend=backend,
        layout=rows[0].layout,
        dtype=rows[0].dtype,
        tokens=rows[0].tokens,
        dispatch_exact=None
        if rows[0].dispatch_exact is None
        else all(r.dispatch_exact for r in rows),
        max_error=max(r.max_error for r in rows),
        passed=not failing,
        seconds=max(r.seconds for r in rows),
        note=(failing or rows)[0].note,
    )


def not_run_result(backend: str, layout: str, dtype: str, tokens, why: str) -> CaseResult:
    """A case whose ranks failed before it produced an output."""
    return CaseResult(
        backend=backend,
        layout=layout,
        dtype=dtype,
        tokens=str(list(tokens)),
        dispatch_exact=None,
        max_error=math.nan,
        passed=False,
        seconds=0.0,
        note=why,
    )
