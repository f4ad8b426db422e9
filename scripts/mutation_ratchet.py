"""The mutation ratchet: re-run mutmut where the modules in scope changed since the kept
report, and fail where a module's score fell below the kept one (``make mutation-ratchet``,
run by ``.ci/run``).

    python scripts/mutation_ratchet.py [--report docs/assets/mutation/report.json] [--dry-run]

A module changed when its text's hash differs from the one the kept report recorded, or it
is in scope (``[tool.mutmut] only_mutate``) and the report does not have it. Of a changed
module, only the mutants of the functions whose text moved run (mutmut's own hash of each
function, the rule mutmut follows when it resumes), with the kept results standing for the
rest; the whole module runs when what it holds outside its functions moved (imports,
constants, class attributes), or the report keeps no per-function record of it. So the
check costs what the change touched. A module with no kept score is measured and shown,
and must reach ``NEW_MODULE_FLOOR``. After a change that moves a score up, ``make
mutation`` keeps the new report (and with it the new hashes). What a per-function re-run
cannot see, an unchanged function whose mutants a change elsewhere let survive, the next
full run does.

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
    return [mutation_report.dotted(m) + ".*" for m in modules]


def functions_to_rerun(module: str, kept_entry: dict | None) -> list[str] | None:
    """The functions of ``module`` (mutmut's mangled names) whose text moved since the kept
    report, or None for the whole module: new in scope, kept without a per-function
    record, or moved outside its functions."""
    if (
        not kept_entry
        or "functions" not in kept_entry
        or kept_entry.get("outside_sha256") != mutation_report.outside_hash(module)
    ):
        return None
    hashes, _ = mutation_report.function_index(module)
    kept = kept_entry["functions"]
    return sorted(f for f, h in hashes.items() if kept.get(f, {}).get("sha256") != h)


def patterns_for(module: str, functions: list[str] | None) -> list[str]:
    """mutmut's names for the mutants to re-run: the module's, or those of ``functions``."""
    if functions is None:
        return mutant_patterns([module])
    return [f"{mutation_report.dotted(module)}.{f}__mutmut_*" for f in functions]


def combined_score(functions: list[str], kept_entry: dict, now_entry: dict) -> float | None:
    """The score of a module when only ``functions`` were re-run: their results now, the
    kept ones for every other function, over every mutant the module has now (this run's
    report counts them all, the ones it did not run as not checked)."""
    total = now_entry["mutants"]
    killed = sum(
        (now_entry if f in functions else kept_entry)["functions"].get(f, {}).get("killed", 0)
        for f in now_entry["functions"]
    )
    return round(killed / total, 4) if total else None


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


def pct(score: float | None) -> str:
    return "-" if score is None else f"{score:.1%}"


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
    plans = {m: functions_to_rerun(m, kept["modules"].get(m)) for m in modules}
    for m in modules:
        what = "every mutant" if plans[m] is None else f"functions {', '.join(plans[m]) or '-'}"
        print(f"mutation ratchet: {m}: re-running {what}")
    patterns = [p for m in modules for p in patterns_for(m, plans[m])]
    if not patterns:
        print("mutation ratchet: no function that mutmut mutates changed; nothing to run")
        return 0
    if args.dry_run:
        return 0
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "2", *patterns])
    if run.returncode not in (0, 1) or not mutation_report.MUTANTS.is_dir():
        print(f"mutation_ratchet: mutmut exited {run.returncode}", file=sys.stderr)
        return 2
    report, problems = mutation_report.build_report()
    shown = {}
    for m in modules:
        if m not in report["modules"]:
            continue
        entry = dict(report["modules"][m])
        functions = plans[m]
        if functions is not None:  # the other functions' mutants were not run: kept results
            entry["score"] = combined_score(functions, kept["modules"][m], entry)
        shown[m] = entry
        before = kept["modules"].get(m, {}).get("score")
        ran = sum(entry["functions"].get(f, {}).get("mutants", 0) for f in functions or [])
        print(
            f"mutation ratchet: {m}: "
            + (f"{ran} mutants re-run, " if functions is not None else "")
            + f"score {pct(entry['score'])} (kept: {pct(before)})"
        )
    problems = [p for p in problems if p.split(":", 1)[0] in modules]
    problems += verdicts({"modules": shown}, kept, modules)
    for problem in problems:
        print(f"mutation_ratchet: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
