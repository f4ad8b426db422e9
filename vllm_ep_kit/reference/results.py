"""The result of one dispatch + combine case on one rank, or merged over ranks, and the
verdict that makes it: a combined output against the oracle, with the dispatch's own.

Every rank function that checks a case (``check``, the manager round trips,
the loopback and real backends alike) returns these, so the CLI, the tests
and the merge over ranks read one shape.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from vllm_ep_kit.reference.moe import RoutingCase, Tokens, max_error, moe_reference
from vllm_ep_kit.reference.tolerance import COMBINE, close, mismatch

VIA_COMBINE = "dispatch checked through the combined output"


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


def same_rows(got: Tokens, want: Tokens) -> bool:
    """Whether dispatch delivered exactly the rows expected (values, ids and weights)."""
    return (
        torch.equal(got.x.cpu(), want.x)
        and torch.equal(got.topk_ids.cpu(), want.topk_ids)
        and torch.equal(got.topk_weights.cpu(), want.topk_weights)
    )


def oracle_result(
    backend_name: str,
    where: str,
    case: RoutingCase,
    out: torch.Tensor,
    source: Tokens,
    start: float,
    exact: bool | None = None,
) -> CaseResult:
    """One case's verdict on this rank: ``out`` (the combined output) against the fp32
    oracle of ``source``, the tokens this rank sent; ``exact`` is the dispatch's own verdict
    where the backend's received rows are known (None: checked through ``out`` alone)."""
    got, want = out.float().cpu(), moe_reference(source, case.num_experts)
    within = close(got, want, COMBINE[case.dtype])
    note = "" if exact is not None else VIA_COMBINE
    if exact is False:
        note = "dispatch delivered other rows than the sources sent"
    elif not within:
        note = mismatch(got, want, COMBINE[case.dtype])
    return CaseResult(
        backend=backend_name,
        layout=where,
        dtype=case.dtype,
        tokens=str(list(case.tokens)),
        dispatch_exact=exact,
        max_error=max_error(got, want),
        passed=exact is not False and within,
        seconds=time.perf_counter() - start,
        note=note,
    )
