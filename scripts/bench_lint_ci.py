"""Seconds ``lint-ci`` takes over a tree: a real one (``--root``), or one generated here at
vLLM's size (``--generate``: 35 area files, 1,000 modules under vllm/, 1,500 test files).

    python scripts/bench_lint_ci.py --root /tmp/vllm-real --repeats 3
    python scripts/bench_lint_ci.py --generate /tmp/lint-tree --repeats 3

Each measurement is a fresh interpreter (imports included, as a user's run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROGRAM = r"""
import json, sys, time
start = time.perf_counter()
from pathlib import Path
from vllm_ep_kit.lint.lint import lint
findings = lint(Path(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - start, "findings": len(findings)}))
"""


def generate(root: Path, areas: int = 35, modules: int = 1000, tests: int = 1500) -> None:
    (root / "vllm").mkdir(parents=True, exist_ok=True)
    (root / "vllm" / "__init__.py").write_text("")
    for i in range(modules):
        folder = root / "vllm" / f"pkg{i % 40}"
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").write_text("")
        (folder / f"mod{i}.py").write_text(f"from vllm.pkg{(i + 1) % 40} import mod{i + 1}\n")
    for i in range(tests):
        folder = root / "tests" / f"area{i % areas}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"test_{i}.py").write_text(
            f"import vllm.pkg{i % 40}.mod{i}\nimport tests.utils\ndef test_x():\n    pass\n"
        )
    (root / "tests" / "utils.py").write_text("import vllm\n")
    area_dir = root / ".buildkite" / "test_areas"
    area_dir.mkdir(parents=True, exist_ok=True)
    for a in range(areas):
        steps = []
        for s in range(8):
            files = [f"area{a}/test_{i}.py" for i in range(a + 35 * s, tests, 35 * 8)][:6]
            steps.append(
                {
                    "label": f"Area {a} step {s}",
                    "key": f"area-{a}-step-{s}",
                    "num_devices": 2,
                    "source_file_dependencies": [f"vllm/pkg{a}/", f"tests/area{a}"],
                    "commands": [f"pytest -v -s {f}" for f in files],
                }
            )
        (area_dir / f"area{a}.yaml").write_text(
            json.dumps(
                {"group": f"Area {a}", "depends_on": ["image-build"], "steps": steps}, indent=1
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--root", type=Path, help="an existing tree (e.g. vLLM's)")
    where.add_argument("--generate", type=Path, metavar="DIR", help="write a vLLM-sized tree here")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = args.root
    if args.generate:
        generate(args.generate)
        root = args.generate
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM, str(root)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"lint-ci over {root}: {statistics.median(r['seconds'] for r in runs):.2f} s median "
        f"of {args.repeats} (each a fresh interpreter), {runs[0]['findings']} findings"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
