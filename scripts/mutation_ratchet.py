"""The mutation ratchet: re-run mutmut on the modules in scope that changed since the kept
report, and fail where a module's score fell below the kept one (``make mutation-ratchet``,
run by ``.ci/run``).

    python scripts/mutation_ratchet.py [--report docs/assets/mutation/report.json] [--dry-run]

A module changed when its text's hash differs from the one the kept report recorded, or it
is in scope (``[tool.mutmut] only_mutate``) and the report does not have it. Only those
modules' mutants run, so the check costs what the change touched; a module with no kept
score is measured and shown, and must reach ``NEW_MODULE_FLOOR``. After a change that moves
a score up, ``make mutation`` keeps the new report (and with it the new hashes).

Exit codes: 0 nothing changed, or no score fell; 1 a score fell, a new module is under the
floor, or a no-mutate mark has no reason; 2 no kept report, or mutmut did not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutation_report  # a script, imported from its folder

REPORT = Path("docs/assets/mutation/report.json")
NEW_MODULE_FLOOR = 0.95  # the score a module entering the scope must reach


def in_scope(pyproject: Path = Path("pyproject.toml")) -> list[str]:
    """The module files ``[tool.mutmut] only_mutate`` names, as repository paths."""
    config = tomllib.loads(pyproject.read_text())["tool"]["mutmut"]
    found: set[str] = set()
    for pattern in config["only_mutate"]:
        found |= {str(p) for p in Path().glob(pattern) if p.name != "__init__.py"}
    return sorted(found)


def changed(modules: list[str], kept: dict) -> list[str]:
    """The modules whose text moved since ``kept`` was written, or that it lacks."""
    return [
        m
        for m in modules
        if m not in kept["modules"]
        or kept["modules"][m].get("sha256") != mutation_report.source_hash(m)
    ]


def mutant_patterns(modules: list[str]) -> list[str]:
    """mutmut's names for every mutant of ``modules`` (``package.module.*``)."""
    return [m.removesuffix(".py").replace("/", ".") + ".*" for m in modules]


def verdicts(report: dict, kept: dict, modules: list[str]) -> list[str]:
    """What fails the ratchet among ``modules``: a score below the kept one, a new module
    under the floor."""
    problems = mutation_report.fell(
        {"modules": {m: report["modules"][m] for m in modules if m in report["modules"]}},
        {"modules": {m: kept["modules"][m] for m in modules if m in kept["modules"]}},
    )
    for m in modules:
        score = report["modules"].get(m, {}).get("score")
        if m not in kept["modules"] and score is not None and score < NEW_MODULE_FLOOR:
            problems.append(
                f"{m}: new in scope with mutation score {score:.1%}, under {NEW_MODULE_FLOOR:.0%}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, default=REPORT, help="the kept report")
    parser.add_argument("--dry-run", action="store_true", help="name the modules; run nothing")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"mutation_ratchet: no kept report at {args.report}", file=sys.stderr)
        return 2
    kept = json.loads(args.report.read_text())
    modules = changed(in_scope(), kept)
    if not modules:
        print("mutation ratchet: no module in scope changed since the kept report")
        return 0
    print(f"mutation ratchet: {len(modules)} module(s) changed: {', '.join(modules)}")
    if args.dry_run:
        return 0
    run = subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", "2"] + mutant_patterns(modules)
    )
    if run.returncode not in (0, 1) or not mutation_report.MUTANTS.is_dir():
        print(f"mutation_ratchet: mutmut exited {run.returncode}", file=sys.stderr)
        return 2
    report, problems = mutation_report.build_report()
    shown = {m: report["modules"][m] for m in modules if m in report["modules"]}
    print(mutation_report.table({"modules": shown, "summary": mutation_report.summarize(shown)}))
    problems = [p for p in problems if p.split(":", 1)[0] in modules]
    problems += verdicts(report, kept, modules)
    for problem in problems:
        print(f"mutation_ratchet: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
