"""The mutation score per module, from mutmut's results in mutants/ (``make mutation``).

    python scripts/mutation_report.py [--out REPORT.json] [--baseline REPORT.json]

For each module in scope: how many mutants mutmut made, how many it has not run yet (a
run stopped early: mutmut resumes where it stopped), how many a test killed (a failing
test, a timeout, a crash), how many survived or reached no test, and the score, killed /
every mutant: one not run yet counts as not killed, so a run stopped early cannot score
high. Lines marked ``# pragma: no mutate (equivalent: why)`` make no mutants (so they are
not in the total): they are counted apart, each with its reason, and a mark without a
reason is refused. Every
survivor is listed with its diff (``mutmut show``).

``--out`` writes the report as JSON (kept in docs/assets/mutation/); ``--baseline`` fails
when a module's score fell below the kept report's, or a kept module went missing. Exit
codes: 0 fine, 1 a refused mark or a score that fell, 2 no results to read.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

MUTANTS = Path("mutants")
# mutmut's exit code per mutant -> what it means for the score (mutmut.stats's own table
# names them; timeouts and crashes are mutants the tests noticed)
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
MARK = re.compile(r"#\s*pragma:\s*no mutate\b(.*)$")
# the reason runs to the mark's last ")" (it may hold parentheses of its own)
REASON = re.compile(r"^\s*\(equivalent: (?P<why>.+)\)\s*$")


def statuses_of(meta: dict) -> dict[str, str]:
    """{mutant name: status} from mutmut's record of one module."""
    from mutmut.stats import status_by_exit_code

    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


def metas() -> dict[str, dict]:
    """{module path: mutmut's record of it} from mutants/**/*.py.meta."""
    return {
        str(meta.relative_to(MUTANTS))[: -len(".meta")]: json.loads(meta.read_text())
        for meta in sorted(MUTANTS.rglob("*.py.meta"))
    }


def dotted(module: str) -> str:
    """mutmut's name of a module: ``pkg/mod.py`` -> ``pkg.mod``."""
    return module.removesuffix(".py").replace("/", ".")


def function_of(name: str, module: str) -> str:
    """The function (mutmut's mangled name) a mutant of ``module`` belongs to:
    ``pkg.mod.x_f__mutmut_3`` -> ``x_f``, ``pkg.mod.xǁKǁm__mutmut_1`` -> ``xǁKǁm``."""
    return name.removeprefix(dotted(module) + ".").rsplit("__mutmut_", 1)[0]


def function_index(module: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """mutmut's own view of ``module`` as its text is now, made without running a test:
    the hash of each function it mutates, and each such function's mutant names."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    made = mutate_file_contents(module, Path(module).read_text())
    names: dict[str, list[str]] = defaultdict(list)
    for name in made.mutant_names:  # unqualified here: x_f__mutmut_3
        names[function_of(name, module)].append(name)
    return dict(made.hash_by_function_name), dict(names)


def outside_hash(module: str) -> str:
    """The hash of what ``module`` holds outside its functions and methods (imports,
    constants, class attributes, docstrings), as syntax: comments and layout do not count.
    A change there may move any function's behaviour."""
    tree = ast.parse(Path(module).read_text())

    def without_functions(body: list[ast.stmt]) -> list[ast.stmt]:
        kept = []
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(node, ast.ClassDef):
                node.body = without_functions(node.body)
            kept.append(node)
        return kept

    tree.body = without_functions(tree.body)
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def equivalent_marks(module: str) -> tuple[list[dict], list[str]]:
    """([{line, why}], [problems]) for the ``no mutate`` marks of ``module``."""
    marks, problems = [], []
    for number, line in enumerate(Path(module).read_text().splitlines(), 1):
        found = MARK.search(line)
        if not found:
            continue
        reason = REASON.match(found.group(1))
        if reason:
            marks.append({"line": number, "why": reason.group("why")})
        else:
            problems.append(
                f"{module}:{number}: a no-mutate mark without its reason; write "
                "'# pragma: no mutate (equivalent: why no test can tell)'"
            )
    return marks, problems


def source_hash(module: str) -> str:
    """The module's text as the report saw it: the ratchet re-runs a module whose hash moved."""
    return hashlib.sha256(Path(module).read_bytes()).hexdigest()


def diff_of(name: str, module: str) -> str:
    """The mutant's diff against its function, as ``mutmut show`` prints it."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        return get_diff_for_mutant(name, path=module)
    except Exception as exc:  # noqa: BLE001 (a diff that cannot be made is reported, not fatal)
        return f"(no diff: {type(exc).__name__}: {exc})"


def functions_of(module: str, by_name: dict[str, str], hashes: dict[str, str]) -> dict:
    """Per function mutmut mutates in ``module``: its hash, its mutants, how many a test
    killed (what the ratchet needs to re-run only the functions whose text moved)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, status in by_name.items():
        counts[function_of(name, module)]["mutants"] += 1
        counts[function_of(name, module)]["killed"] += status in KILLED
    return {
        function: {
            "sha256": hashes.get(function),
            "mutants": counts[function]["mutants"],
            "killed": counts[function]["killed"],
        }
        for function in sorted(counts)
    }


def build_report() -> tuple[dict, list[str]]:
    modules, problems = {}, []
    for module, meta in metas().items():
        by_name = statuses_of(meta)
        counts = Counter(by_name.values())
        killed = sum(counts[s] for s in KILLED)
        marks, bad = equivalent_marks(module)
        problems += bad
        checked = len(by_name) - counts["not checked"]
        survivors = sorted(n for n, s in by_name.items() if s not in KILLED | {"not checked"})
        modules[module] = {
            "sha256": source_hash(module),
            "mutants": len(by_name),
            "not_checked": counts["not checked"],
            "killed": killed,
            "timeout": counts["timeout"],
            "survived": counts["survived"],
            "no_tests": counts["no tests"],
            "other": checked - killed - counts["survived"] - counts["no tests"],
            # over every mutant: one not run yet is one not killed
            "score": round(killed / len(by_name), 4) if by_name else None,
            "equivalent_lines": marks,
            "outside_sha256": outside_hash(module),
            "functions": functions_of(module, by_name, meta.get("hash_by_function_name", {})),
            "survivors": [
                {"name": n, "status": by_name[n], "diff": diff_of(n, module)} for n in survivors
            ],
        }
    return {"summary": summarize(modules), "modules": modules}, problems


def summarize(modules: dict) -> dict:
    """The totals over ``modules`` (the report's entries)."""
    total = sum(m["mutants"] for m in modules.values())
    checked = total - sum(m["not_checked"] for m in modules.values())
    killed = sum(m["killed"] for m in modules.values())
    return {
        "mutants": total,
        "not_checked": total - checked,
        "killed": killed,
        "score": round(killed / total, 4) if total else None,
        "equivalent_lines": sum(len(m["equivalent_lines"]) for m in modules.values()),
    }


def fell(report: dict, baseline: dict) -> list[str]:
    """Modules whose score fell below the baseline's, or that the baseline has and the
    report does not."""
    problems = []
    for module, kept in baseline["modules"].items():
        now = report["modules"].get(module)
        if now is None:
            problems.append(f"{module}: in the baseline, not in this run")
        elif kept["score"] is not None and (now["score"] or 0) < kept["score"]:
            problems.append(
                f"{module}: mutation score {now['score']:.1%} fell below {kept['score']:.1%}"
            )
    return problems


def table(report: dict) -> str:
    rows = [
        "| module | mutants | not checked | killed | survived | no test reached it | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(score):
        return "-" if score is None else f"{score:.1%}"

    for module, m in sorted(report["modules"].items()):
        if not m["mutants"]:
            continue
        rows.append(
            f"| `{module}` | {m['mutants']} | {m['not_checked']} | {m['killed']} | "
            f"{m['survived']} | {m['no_tests']} | {pct(m['score'])} |"
        )
    s = report["summary"]
    rows.append(
        f"| all | {s['mutants']} | {s['not_checked']} | {s['killed']} | | | {pct(s['score'])} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the report (JSON) here")
    parser.add_argument("--baseline", type=Path, help="fail where a score fell below this")
    args = parser.parse_args(argv)
    if not MUTANTS.is_dir():
        print("mutation_report: no mutants/ here; run `make mutation` first", file=sys.stderr)
        return 2
    report, problems = build_report()
    if not report["modules"]:
        print("mutation_report: mutants/ holds no results", file=sys.stderr)
        return 2
    if args.baseline:
        problems += fell(report, json.loads(args.baseline.read_text()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(table(report))
    survivors = sum(len(m["survivors"]) for m in report["modules"].values())
    print(f"\n{survivors} survivors; each with its diff in {args.out or 'the --out report'}")
    for problem in problems:
        print(f"mutation_report: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
