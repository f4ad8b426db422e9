#!/usr/bin/env python3
"""Recall of ``lint-ci`` on CI-coverage defects that vLLM fixed by hand.

Each case of the corpus (``docs/assets/lint-recall/corpus.json``) names a commit that fixed
a defect of vLLM's Buildkite configuration, its parent, and where the defect was in the
parent.  For each case this script writes both trees out of a git mirror that carries
vLLM's history (into a scratch folder, removed after use), lints each as the pipeline
generator of its own commit date read it, and reports whether lint-ci flags the defect on
the parent and no longer on the fix.

    python3 scripts/lint_recall.py --git-dir /path/to/vllm.git \\
        [--corpus docs/assets/lint-recall/corpus.json] [--out report.json] [--only ID,..]

Exit 0 when every tree was linted (whatever the recall), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.area import Finding
from vllm_ep_kit.lint.lint import lint

CORPUS = Path(__file__).resolve().parent.parent / "docs/assets/lint-recall/corpus.json"
# The rules whose finding reports each kind of defect.
RULES_FOR = {
    "stale-dependency": {"stale-dependency"},
    "uncovered": {"uncovered", "stale-dependency", "dependencies"},
    "orphaned-test": {"orphaned-test", "listed-not-run"},
    "gpu-count": {"gpu-count"},
    "dead-key": {"dead-key"},
    "path-exists": {"path-exists", "missing-test"},
    "missing-test": {"missing-test", "path-exists"},
}
LABEL = re.compile(r"^\s*-\s+label:")
FOLDER = re.compile(r"test files of (\S+)/ ")


def git(git_dir: str, *args: str) -> bytes:
    return subprocess.run(["git", "-C", git_dir, *args], check=True, capture_output=True).stdout


def commit_date(git_dir: str, rev: str) -> str:
    return git(git_dir, "log", "-1", "--format=%cI", rev).decode().strip()


def extract(git_dir: str, rev: str, dest: Path) -> int:
    """Write ``rev``'s tree under ``dest``; blobs the mirror lacks (its largest files, kept
    out of partial clones) are skipped.  Returns how many were skipped."""
    listing = git(git_dir, "ls-tree", "-r", "-z", rev)
    blobs = []
    for item in listing.split(b"\0"):
        if item:
            meta, path = item.split(b"\t", 1)
            mode, kind, sha = meta.split()
            if kind == b"blob":
                blobs.append((mode, sha, path.decode(errors="surrogateescape")))
    reader = subprocess.Popen(
        ["git", "-C", git_dir, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert reader.stdin is not None and reader.stdout is not None
    skipped = 0
    try:
        for mode, sha, path in blobs:
            reader.stdin.write(sha + b"\n")
            reader.stdin.flush()
            header = reader.stdout.readline().split()
            if header[-1] == b"missing":
                skipped += 1
                continue
            data = reader.stdout.read(int(header[2]))
            reader.stdout.read(1)  # the newline after each object
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == b"120000":
                os.symlink(data.decode(errors="surrogateescape"), target)
            else:
                target.write_bytes(data)
    finally:
        reader.stdin.close()
        reader.wait()
    return skipped


@dataclass
class Case:
    id: str
    fix: str
    parent: str
    kind: str
    file: str
    line: int
    defect: str

    @classmethod
    def of(cls, row: dict) -> Case:
        return cls(
            row["id"],
            row["fix"],
            row["parent"],
            row["kind"],
            row["file"],
            int(row["line"]),
            row["defect"],
        )


def step_span(tree: Path, file: str, line: int) -> tuple[int, int]:
    """The lines of the step holding ``line`` in a YAML file (its label to the next label)."""
    try:
        lines = (tree / file).read_text(errors="replace").splitlines()
    except OSError:
        return line, line
    start = next((n for n in range(line, 0, -1) if LABEL.match(lines[n - 1])), line)
    end = next((n for n in range(line + 1, len(lines) + 1) if LABEL.match(lines[n - 1])), 0)
    return start, (end - 1 if end else len(lines))


def places(finding: Finding) -> list[tuple[str, int]]:
    """Where a finding points, the places folded into it included."""
    found = [(finding.path, finding.line)]
    for place in finding.also:
        path, _, line = place.rpartition(":")
        if path and line.isdigit():
            found.append((path, int(line)))
    return found


def reports(case: Case, finding: Finding, span: tuple[int, int]) -> bool:
    """Whether ``finding`` is lint-ci's report of the case's defect."""
    if finding.rule not in RULES_FOR[case.kind]:
        return False
    if case.kind == "orphaned-test":
        folder = FOLDER.search(finding.message)
        return (
            finding.path == case.file
            or bool(folder and case.file.startswith(folder.group(1) + "/"))
            or (finding.rule == "listed-not-run" and case.file in finding.message)
        )
    if case.kind in ("stale-dependency", "dead-key", "path-exists", "missing-test"):
        span = (case.line, case.line)  # the entry, key or command itself, not its step
    return any(path == case.file and span[0] <= line <= span[1] for path, line in places(finding))


def same(a: Finding, b: Finding) -> bool:
    """One defect seen in two trees: rule, file and message (lines move between commits)."""
    return (a.rule, a.path, a.message) == (b.rule, b.path, b.message)


def lint_at(git_dir: str, rev: str, scratch: Path) -> tuple[list[Finding], Path]:
    tree = Path(tempfile.mkdtemp(prefix=f"tree-{rev[:10]}-", dir=scratch))
    extract(git_dir, rev, tree)
    # each place on its own: a fix may mend one step of several that share a defect
    generator = conventions.generator(commit_date(git_dir, rev))
    return lint(tree, generator=generator, fold_causes=False), tree


def run_case(git_dir: str, case: Case, scratch: Path) -> dict:
    before, parent_tree = lint_at(git_dir, case.parent, scratch)
    try:
        span = step_span(parent_tree, case.file, case.line)
        hits = [f for f in before if reports(case, f, span)]
    finally:
        shutil.rmtree(parent_tree, ignore_errors=True)
    after, fix_tree = lint_at(git_dir, case.fix, scratch)
    shutil.rmtree(fix_tree, ignore_errors=True)
    left = [f.format() for f in after if any(same(f, hit) for hit in hits)]
    return {
        "id": case.id,
        "kind": case.kind,
        "flagged_on_parent": bool(hits),
        "gone_on_fix": bool(hits) and not left,
        "parent_findings": [f.format() for f in hits],
        "left_on_fix": left,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-dir", required=True, help="a git mirror carrying vLLM's history")
    parser.add_argument("--corpus", default=str(CORPUS), help="the cases (JSON list)")
    parser.add_argument("--out", default=None, help="write the per-case report (JSON) here")
    parser.add_argument("--only", default="", help="comma-separated case ids")
    parser.add_argument("--scratch", default=None, help="where trees are written (a temp dir)")
    args = parser.parse_args(argv)
    try:
        rows = json.loads(Path(args.corpus).read_text())
        cases = [Case.of(r) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"lint_recall: --corpus: {args.corpus}: not a corpus ({exc})", file=sys.stderr)
        return 2
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c.id in wanted]
    try:
        git(args.git_dir, "rev-parse", "--git-dir")
    except (OSError, subprocess.CalledProcessError):
        print(f"lint_recall: --git-dir: {args.git_dir} is not a git repository", file=sys.stderr)
        return 2
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lint-recall-", dir=args.scratch) as scratch:
        for number, case in enumerate(cases, 1):
            result = run_case(args.git_dir, case, Path(scratch))
            results.append(result)
            verdict = (
                "found, gone on the fix"
                if result["gone_on_fix"]
                else "found, still found on the fix"
                if result["flagged_on_parent"]
                else "missed"
            )
            print(f"[{number}/{len(cases)}] {case.id} ({case.kind}): {verdict}", flush=True)
    found = sum(r["gone_on_fix"] for r in results)
    summary = {
        "cases": len(results),
        "found_and_gone_on_fix": found,
        "flagged_on_parent": sum(r["flagged_on_parent"] for r in results),
        "recall": round(found / len(results), 3) if results else None,
        "seconds": round(time.monotonic() - started, 1),
        "by_kind": {
            kind: f"{sum(r['gone_on_fix'] for r in results if r['kind'] == kind)}/"
            f"{sum(r['kind'] == kind for r in results)}"
            for kind in sorted({r["kind"] for r in results})
        },
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"summary": summary, "cases": results}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    # a stop from outside unwinds like Ctrl-C: the scratch trees are removed on the way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the scratch trees and git's reader are gone by now
        print("lint_recall: interrupted", file=sys.stderr)
        sys.exit(130)
