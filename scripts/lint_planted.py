#!/usr/bin/env python3
"""Plant five CI defects in a copy of a vLLM tree and check that ``lint-ci`` finds each.

The defects are the ones vLLM's CI has had, each where lint-ci should point: a test file
under tests/distributed/ that no step runs; a Kubernetes 2-GPU step running torchrun
with 4 processes; a dependency entry naming a file that is gone; a pytest node id that
does not exist; a 2-GPU pod serving DP=4.  The copy is made in a scratch folder and
removed; the tree itself is not touched.

    python3 scripts/lint_planted.py --tree /tmp/vllm-ffd91ee17 [--as-of DATE]

Exit 0 when every planted defect is found (and none of the planted clean steps gives a
finding), 1 when one is missed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from vllm_ep_kit.lint import conventions
from vllm_ep_kit.lint.lint import lint

AREA = ".buildkite/test_areas/planted.yaml"
ORPHAN = "tests/distributed/test_planted_orphan.py"
# (rule, text of the line the finding must point at): one per planted defect
STEPS = """\
group: Planted
depends_on:
  - image-build
steps:
  - label: Planted torchrun on a pod
    device: b200-k8s
    num_devices: 2
    source_file_dependencies:
      - tests/distributed/
    commands:
      - torchrun --nproc-per-node=4 distributed/test_torchrun_example.py
  - label: Planted stale entry
    device: h100
    source_file_dependencies:
      - tests/distributed/
      - vllm/distributed/planted_gone.py
    commands:
      - pytest -v -s distributed/test_utils.py
  - label: Planted node id
    device: h100
    source_file_dependencies:
      - tests/distributed/
    commands:
      - pytest -v -s distributed/test_utils.py::test_planted_no_such_test
  - label: Planted DP on a pod
    device: h100
    num_devices: 2
    source_file_dependencies:
      - tests/distributed/
    commands:
      - vllm serve facebook/opt-125m --data-parallel-size 4
"""
EXPECTED = [
    ("gpu-count", AREA, "torchrun --nproc-per-node=4"),
    ("stale-dependency", AREA, "vllm/distributed/planted_gone.py"),
    ("missing-test", AREA, "::test_planted_no_such_test"),
    ("gpu-count", AREA, "--data-parallel-size 4"),
    ("orphaned-test", ORPHAN, None),
]


def line_of(root: Path, path: str, text: str | None) -> int:
    if text is None:
        return 1
    lines = (root / path).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", required=True, help="a vLLM tree (not modified)")
    parser.add_argument("--as-of", default=None, help="read it as the generator of DATE")
    args = parser.parse_args(argv)
    tree = Path(args.tree)
    if not (tree / ".buildkite").is_dir():
        print(f"lint_planted: --tree: {tree} holds no .buildkite/", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lint-planted-") as scratch:
        copy = Path(scratch) / "tree"
        shutil.copytree(tree, copy, symlinks=True)
        generator = conventions.generator(args.as_of)
        before = {(f.path, f.line, f.rule) for f in lint(copy, generator=generator)}
        (copy / AREA).write_text(STEPS)
        (copy / ORPHAN).write_text("def test_planted():\n    pass\n")
        after = lint(copy, generator=generator)
        new = [f for f in after if (f.path, f.line, f.rule) not in before]
        missed = 0
        for rule, path, text in EXPECTED:
            line = line_of(copy, path, text)
            hits = [f for f in new if (f.rule, f.path, f.line) == (rule, path, line)]
            print(f"{rule} at {path}:{line}: " + (hits[0].format() if hits else "MISSED"))
            missed += not hits
        expected = {(path, line_of(copy, path, text), rule) for rule, path, text in EXPECTED}
        extra = [f for f in new if (f.path, f.line, f.rule) not in expected]
        for finding in extra:
            print(f"unexpected: {finding.format()}")
    print(
        f"{len(EXPECTED) - missed} of {len(EXPECTED)} planted defects found, {len(extra)} other new finding(s)"
    )
    return 1 if missed or extra else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("lint_planted: interrupted", file=sys.stderr)
        sys.exit(130)
