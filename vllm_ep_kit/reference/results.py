"""The result of one case, on one rank or merged over ranks: the one shape every check
of a case returns, and the verdict that makes it.

A case is one input through one path under test (a dispatch + combine through a
backend, a MoE layer, a prepare/finalize step, an expert kernel), compared with
the fp32 reference under an entry of the one tolerance table.  ``check``, the
layer matrix, the prepare/finalize steps, the manager round trips and the
kernels' own tests all return :class:`CaseResult`; the CLI reads its fields and
JSON, and a test re-checks its tensors with :meth:`CaseResult.assert_close`, so
a failure says which elements differ and by how much.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from vllm_ep_kit.reference.moe import RoutingCase, Tokens, max_error, moe_reference
from vllm_ep_kit.reference.tolerance import COMBINE, Tolerance, close, mismatch

VIA_COMBINE = "dispatch checked through the combined output"
OTHER_ROWS = "dispatch delivered other rows than the sources sent"

# Kept on a rank's result for a test to re-check, never serialised or merged.
_TENSORS = ("out", "want", "tolerance")


@dataclass
class CaseResult:
    backend: str
    layout: str
    dtype: str
    tokens: str
    dispatch_exact: bool | None  # None: not observable separately (checked via the output)
    max_error: float
    passed: bool
    seconds: float
    note: str = ""
    # what one kind of check measures besides (the experts that ran, the transport, the
    # output's scale against the reference): JSON values
    detail: dict[str, Any] = field(default_factory=dict)
    out: torch.Tensor | None = field(default=None, repr=False, compare=False)
    want: torch.Tensor | None = field(default=None, repr=False, compare=False)
    tolerance: Tolerance | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """JSON-ready: every field but the tensors (a case that never produced an output
        has no error: null)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSORS}
        data["detail"] = dict(self.detail)
        if not math.isfinite(data["max_error"]):
            data["max_error"] = None
        return data

    def describe(self) -> str:
        return f"{self.backend}, {self.layout}, {self.dtype}, tokens {self.tokens}"

    def assert_close(self, where: str = "") -> None:
        """The output is the reference within the tolerance it was judged by; the failure
        is torch.testing's (which elements, by how much, where), prefixed with ``where``."""
        if self.out is None or self.want is None or self.tolerance is None:
            raise ValueError(
                f"{self.describe()}: this result kept no tensors (merged, or never ran)"
            )
        atol, rtol = self.tolerance.atol, self.tolerance.rtol
        torch.testing.assert_close(
            self.out.float(),
            self.want.float(),
            atol=atol,
            rtol=rtol,
            msg=lambda m: f"{where or self.describe()} (atol {atol}, rtol {rtol}): {m}",
        )


def compared(
    backend: str,
    layout: str,
    case: RoutingCase,
    out: torch.Tensor,
    want: torch.Tensor,
    tolerance: Tolerance,
    start: float,
    *,
    dispatch: list[str] | None = None,
    **detail: Any,
) -> CaseResult:
    """One case's verdict on this rank: ``out`` against the reference ``want`` within
    ``tolerance``, and the dispatch's own findings where they are observable (``[]``:
    exact; None: checked through ``out`` alone).  The note says every reason it failed."""
    got, ref = out.detach().float().cpu(), want.detach().float().cpu()
    within = close(got, ref, tolerance)
    notes = list(dispatch or [])
    if not within:
        notes.append(mismatch(got, ref, tolerance))
    return CaseResult(
        backend=backend,
        layout=layout,
        dtype=case.dtype,
        tokens=str(list(case.tokens)),
        dispatch_exact=None if dispatch is None else not dispatch,
        max_error=max_error(got, ref),
        passed=within and not dispatch,
        seconds=time.perf_counter() - start,
        note="; ".join(notes),
        detail=detail,
        out=got,
        want=ref,
        tolerance=tolerance,
    )


def merge_case_rows(backend: str, rows: list[CaseResult]) -> CaseResult:
    """One case as every rank saw it: it passes only if it passed on every rank; the error
    is the largest and the note and detail the first failing rank's."""
    failing = [r for r in rows if not r.passed]
    first = (failing or rows)[0]
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
        note=first.note,
        detail=dict(first.detail),
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
    """A dispatch + combine's verdict on this rank: ``out`` (the combined output) against
    the fp32 oracle of ``source``, the tokens this rank sent, within the combine's
    tolerance; ``exact`` is the dispatch's own verdict where the backend's received rows
    are known (None: checked through ``out`` alone, which a passing note says)."""
    dispatch = None if exact is None else [] if exact else [OTHER_ROWS]
    result = compared(
        backend_name,
        where,
        case,
        out,
        moe_reference(source, case.num_experts),
        COMBINE[case.dtype],
        start,
        dispatch=dispatch,
    )
    if result.passed and exact is None:
        result.note = VIA_COMBINE
    return result
