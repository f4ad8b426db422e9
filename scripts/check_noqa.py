"""Every ``# noqa`` names its rule and says why: ``# noqa: BLE001 (reason)``.

ruff itself checks the rest: PGH004 refuses a bare ``noqa``, RUF100 one whose rule is
not selected or does not fire there.  What ruff cannot check is the reason.

    python scripts/check_noqa.py [PATH ...]    # default: the Python files git tracks
"""

from __future__ import annotations

import re
import subprocess
import sys
import tokenize
from pathlib import Path

NOQA = re.compile(r"#\s*noqa\b(?P<rest>.*)$")
WELL_FORMED = re.compile(r":\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s+\(\S[^)]*\)")


def problems(path: Path) -> list[str]:
    """A line per comment of ``path`` whose noqa lacks its rule or its reason (comments
    only: a string that shows a noqa, like this docstring, is not one)."""
    found = []
    with tokenize.open(path) as source:
        for token in tokenize.generate_tokens(source.readline):
            if token.type != tokenize.COMMENT:
                continue
            match = NOQA.search(token.string)
            if match and not WELL_FORMED.match(match.group("rest")):
                found.append(
                    f"{path}:{token.start[0]}: a noqa names its rule and its reason, "
                    "e.g. `# noqa: BLE001 (a probe never raises)` [noqa-reason]"
                )
    return found


def main(argv: list[str]) -> int:
    if argv:
        paths = [Path(a) for a in argv]
    else:
        listed = subprocess.run(
            ["git", "ls-files", "*.py"], capture_output=True, text=True, check=True
        ).stdout
        paths = [Path(name) for name in listed.split()]
    found = [line for path in paths for line in problems(path)]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
