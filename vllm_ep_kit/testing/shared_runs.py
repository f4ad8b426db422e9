"""Multi-rank runs shared by several tests of a module: each starts once, failure included.

A module-scoped fixture returns a :class:`SharedRuns`; tests ask it for a
run by key.  The first ask runs it; later asks get the same values, or the
same failure again (re-raised, not re-run: a start that fails after minutes
must not cost minutes per dependent test, as ``functools.cache`` did, which
caches only successes).  The fixture's scope ends the cache, so a later
module or a pooled session never sees another module's results.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class SharedRuns:
    def __init__(self, start: Callable[..., Any]):
        self._start = start
        self._done: dict[Hashable, tuple[bool, Any]] = {}

    def __call__(self, *key: Hashable) -> Any:
        if key not in self._done:
            try:
                self._done[key] = (True, self._start(*key))
            except BaseException as exc:  # noqa: BLE001 (skips and failures alike)
                self._done[key] = (False, exc)
        ok, value = self._done[key]
        if ok:
            return value
        raise value

    @property
    def starts(self) -> int:
        """How many runs were started (one per distinct key)."""
        return len(self._done)
