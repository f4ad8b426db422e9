#!/usr/bin/env python3
"""Read pytest's JUnit XML reports: time per module and per test, and outcome differences.

    python3 scripts/junit_report.py times REPORT.xml [--top N]
    python3 scripts/junit_report.py diff BEFORE.xml AFTER.xml

``times`` prints the report's tests grouped by module (seconds, tests, share of the
total), then its N slowest tests.  ``diff`` prints every test whose outcome differs
between the two reports (passed, failed, skipped, error, or absent), and exits 1 if
any does: the check that a change to how tests run (the rank pool) changed no outcome.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def cases(junit: Path) -> list[tuple[str, str, float]]:
    """(test id, outcome, seconds) for each test case of a JUnit XML report."""
    found = []
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case]
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        found.append((name, outcome.replace("failure", "failed"), float(case.get("time", 0))))
    return found


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed | failed | skipped | error."""
    return {name: outcome for name, outcome, _ in cases(junit)}


def module_of(test_id: str) -> str:
    """``tests.harness.test_pool::test_x`` -> ``tests/harness/test_pool.py``."""
    classname = test_id.split("::")[0]
    parts = classname.split(".")
    while parts and not parts[-1].startswith("test_"):
        parts.pop()  # a class inside the module
    return "/".join(parts) + ".py" if parts else classname


def times(junit: Path, top: int) -> str:
    found = cases(junit)
    total = sum(seconds for _, _, seconds in found) or 1.0
    per_module: dict[str, list[float]] = defaultdict(list)
    for name, _, seconds in found:
        per_module[module_of(name)].append(seconds)
    lines = [f"{'seconds':>8} {'tests':>5} {'share':>6}  module"]
    for module, spent in sorted(per_module.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{sum(spent):8.1f} {len(spent):5d} {sum(spent) / total:6.1%}  {module}")
    lines.append(f"{total:8.1f} {len(found):5d} {1:6.1%}  all")
    lines.append("")
    lines.append(f"the {top} slowest tests:")
    for name, outcome, seconds in sorted(found, key=lambda c: -c[2])[:top]:
        lines.append(f"{seconds:8.1f}  {outcome:7}  {name}")
    return "\n".join(lines)


def diff(before: Path, after: Path) -> list[str]:
    old, new = outcomes(before), outcomes(after)
    return [
        f"{name}: {old.get(name, 'absent')} -> {new.get(name, 'absent')}"
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("times", help="time per module and the slowest tests")
    show.add_argument("report", type=Path)
    show.add_argument("--top", type=int, default=25)
    compare = commands.add_parser("diff", help="tests whose outcome differs")
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    for path in [getattr(args, a) for a in ("report", "before", "after") if hasattr(args, a)]:
        if not path.is_file():
            parser.error(f"{path}: no such JUnit XML report")
    if args.command == "times":
        print(times(args.report, args.top))
        return 0
    differences = diff(args.before, args.after)
    print("\n".join(differences) or "same outcome for every test")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
