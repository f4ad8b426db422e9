"""One module per lint rule; each exposes ``RULE`` and ``check(ctx) -> list[Finding]``.

Every module of this package is a rule and is imported here, in name order:
adding a rule is adding its module (docs/contributing.md, "Add a lint rule").  The
order rules run in does not show: findings are reported sorted by file, line and rule.
"""

import importlib
import pkgutil

ALL_RULES = [
    importlib.import_module(f"{__name__}.{module.name}")
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name)
]
RULE_NAMES = [rule.RULE for rule in ALL_RULES]
