#!/usr/bin/env python3
"""Precision of ``lint-ci`` on a real tree, from findings judged by hand.

A judgments file (``docs/assets/lint-precision/<commit>.json``) names a vLLM commit, its
commit time and the findings someone checked against that tree, each with a verdict
(``true``: a real defect; ``false``: the claim is wrong; ``arguable``: right, but not
clearly a defect) and the reason.  This script lints the tree (extracted outside the
repository) as the pipeline generator of that time read it and reports, for the findings
it gives today: how many were judged, the verdicts, precision = true / (true + false),
and the judged findings it no longer gives (a lost true finding is lost recall).

    python3 scripts/lint_precision.py --tree /tmp/vllm-8824f50f1f \\
        docs/assets/lint-precision/8824f50f1f.json [--json]

Exit 0 with the figures, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.lint import lint

VERDICTS = ("true", "arguable", "false")


def measure(tree: Path, judgments: dict) -> dict:
    started = time.monotonic()
    findings = lint(tree, generator=conventions.generator(judgments["committed"]))
    seconds = time.monotonic() - started
    # a fixed tree keeps its lines: a finding is the judged one at its place and rule
    judged = {(j["path"], j["line"], j["rule"]): j for j in judgments["judged"]}
    given = {(f.path, f.line, f.rule) for f in findings}
    present = [judged[key] for key in given if key in judged]
    counts = Counter(j["verdict"] for j in present)
    true, false = counts["true"], counts["false"]
    return {
        "tree": judgments["tree"],
        "committed": judgments["committed"],
        "findings": len(findings),
        "judged": len(present),
        **{verdict: counts[verdict] for verdict in VERDICTS},
        "precision": round(true / (true + false), 3) if true + false else None,
        "no_longer_given": Counter(j["verdict"] for key, j in judged.items() if key not in given),
        "lint_seconds": round(seconds, 2),
        "false_findings": [
            f"{j['path']}:{j['line']}: {j['rule']}" for j in present if j["verdict"] == "false"
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("judgments", help="a judgments file (JSON)")
    parser.add_argument("--tree", required=True, help="the tree of that commit, extracted")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    tree = Path(args.tree)
    if not tree.is_dir():
        print(f"lint_precision: --tree: {tree} is not a directory", file=sys.stderr)
        return 2
    try:
        judgments = json.loads(Path(args.judgments).read_text())
        for row in judgments["judged"]:
            if row["verdict"] not in VERDICTS or not row.get("reason"):
                raise ValueError(f"a judgment without a verdict or a reason: {row}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"lint_precision: {args.judgments}: not a judgments file ({exc})", file=sys.stderr)
        return 2
    result = measure(tree, judgments)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['tree']} ({result['committed'][:10]}): {result['findings']} findings, "
            f"{result['judged']} judged: {result['true']} true, {result['arguable']} arguable, "
            f"{result['false']} false; precision {result['precision']}; judged findings no "
            f"longer given: {dict(result['no_longer_given']) or 'none'}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("lint_precision: interrupted", file=sys.stderr)
        sys.exit(130)
