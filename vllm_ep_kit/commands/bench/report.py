"""Per-rank rows -> one row per point, with bandwidth and the ratios users compare.

A collective step is as slow as its slowest rank: times are the maximum of
the ranks' medians; bytes are the ranks' mean bytes leaving a rank.
``vs_baseline`` is baseline time / backend time (above 1: faster than
``all_to_all_single`` on the same tokens); ``vs_link`` is the backend's
bandwidth over the slowest GPU's measured peer-copy bandwidth.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from vllm_ep_kit.reference.tolerance import BENCH_CHECK

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 1}
# What ``bench --from-json`` reads back (its table and plot): a report written by
# ``bench`` always matches; anything else is refused with the first mismatch.
REPORT_SCHEMA = {
    "type": "object",
    "required": ["meta", "results"],
    "properties": {
        "meta": {
            "type": "object",
            "properties": {
                "world_size": _COUNT,
                "timer": {"type": "string"},
                "device": {"type": "string"},
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "backend",
                    "hidden",
                    "dtype",
                    "tokens",
                    "dispatch_ms",
                    "combine_ms",
                    "total_ms",
                    "gbps",
                    "vs_baseline",
                    "vs_link",
                    "check",
                    "baseline",
                    "baseline_gbps",
                ],
                "properties": {
                    "backend": {"type": "string"},
                    "dtype": {"type": "string"},
                    "baseline": {"type": "string"},
                    "hidden": _COUNT,
                    "tokens": _COUNT,
                    "dispatch_ms": _NUMBER_OR_NULL,
                    "combine_ms": _NUMBER_OR_NULL,
                    "total_ms": _NUMBER_OR_NULL,
                    "gbps": _NUMBER_OR_NULL,
                    "baseline_gbps": _NUMBER_OR_NULL,
                    "vs_baseline": _NUMBER_OR_NULL,
                    "vs_link": _NUMBER_OR_NULL,
                    "check": {"type": "string"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["backend"],
                "properties": {
                    "backend": {"type": "string"},
                    "gbps": _NUMBER_OR_NULL,
                    "why": {"type": "string"},
                },
            },
        },
    },
}


def check_report(report) -> None:
    """Raise ValueError naming the first part of ``report`` that is not what bench writes."""
    import jsonschema

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(REPORT_SCHEMA).iter_errors(report)
    )
    if error is not None:
        # "$.results[1].hidden" -> "results[1].hidden"; the schema's keys are plain names
        raise ValueError(f"{error.json_path[2:] or 'the report'}: {error.message}")


# bench's check of its round trips (the reference's one tolerance table says why).
CHECK_TOLERANCE = BENCH_CHECK.atol
KEY = ("backend", "hidden", "dtype", "tokens")


def link_summary(per_rank_links: list[dict]) -> dict:
    rates = [link["gbps"] for link in per_rank_links]
    if any(rate is None for rate in rates):
        why = next(link.get("why", "") for link in per_rank_links if link["gbps"] is None)
        return {"gbps": None, "why": why, "per_rank": per_rank_links}
    return {"gbps": min(rates), "per_rank": per_rank_links}


def _gbps(nbytes: float, ms: float) -> float | None:
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else None


def merge_point(rank_rows: list[dict], link_gbps: float | None) -> dict:
    first = rank_rows[0]
    total = max(r["total_ms"] for r in rank_rows)
    base = max(r["baseline_ms"] for r in rank_rows)
    nbytes = sum(r["remote_bytes"] for r in rank_rows) / len(rank_rows)
    base_bytes = sum(r["baseline_remote_bytes"] for r in rank_rows) / len(rank_rows)
    errors = [r["check_error"] for r in rank_rows if r["check_error"] is not None]
    gbps = _gbps(nbytes, total)
    return {
        **{k: first[k] for k in KEY},
        "ranks": len(rank_rows),
        "dispatch_ms": max(r["dispatch_ms"] for r in rank_rows),
        "combine_ms": max(r["combine_ms"] for r in rank_rows),
        "total_ms": total,
        "remote_bytes": nbytes,
        "gbps": gbps,
        "baseline": first["baseline"],
        "baseline_ms": base,
        "baseline_gbps": _gbps(base_bytes, base),
        "vs_baseline": base / total if total > 0 else None,
        "vs_link": gbps / link_gbps if gbps is not None and link_gbps else None,
        "check_error": max(errors) if errors else None,
        "check": (
            "not checked" if not errors else "ok" if max(errors) <= CHECK_TOLERANCE else "FAILED"
        ),
    }


def merge_ranks(rank_rows: list[dict], world: int, link_gbps: float | None) -> list[dict]:
    """Points every rank measured, merged, in measuring order."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for row in rank_rows:
        grouped[tuple(row[k] for k in KEY)].append(row)
    return [merge_point(rows, link_gbps) for rows in grouped.values() if len(rows) == world]


def read_partial_rows(partial_dir: Path, backend: str) -> list[dict]:
    """Every rank's rows written so far for ``backend`` (a torn last line is skipped)."""
    rows = []
    for path in sorted(Path(partial_dir).glob(f"{backend}.rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
