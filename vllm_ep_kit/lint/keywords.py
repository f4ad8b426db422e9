"""pytest's ``-k`` expressions, read as far as the tree tells.

``-k EXPR`` keeps a test when EXPR is true of its keywords: each word of EXPR matches when
it is a case-insensitive substring of one of the test's names (its function, class, module
and folders), of its marks or of its parametrize ids; ``and``, ``or``, ``not`` and
parentheses combine them.  The linter knows the names, not every id or mark, so a word
that matches no name is unknown, and the expression is read in three values: a test is
left out only when the expression is false whatever the unknown words are
(``-k "not tp2"`` leaves out ``test_all_reduce_tp2``; ``-k FLASHINFER`` leaves out
nothing that the linter can prove).  An expression pytest would reject leaves out nothing
here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TOKEN = re.compile(r"\(|\)|[^\s()]+")
OPERATORS = frozenset({"and", "or", "not"})


class _Unreadable(ValueError):
    """Not an expression pytest accepts."""


class _Reader:
    def __init__(self, expression: str, names: Iterable[str]) -> None:
        self.tokens = TOKEN.findall(expression)
        self.pos = 0
        self.names = [name.lower() for name in names]

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Unreadable("the expression ends early")
        self.pos += 1
        return token

    def either(self) -> bool | None:  # a or b or ...
        value = self.both()
        while self.peek() == "or":
            self.take()
            right = self.both()
            value = True if True in (value, right) else (None if None in (value, right) else False)
        return value

    def both(self) -> bool | None:  # a and b and ...
        value = self.negated()
        while self.peek() == "and":
            self.take()
            right = self.negated()
            value = False if False in (value, right) else (None if None in (value, right) else True)
        return value

    def negated(self) -> bool | None:
        token = self.take()
        if token == "not":
            value = self.negated()
            return None if value is None else not value
        if token == "(":
            value = self.either()
            if self.take() != ")":
                raise _Unreadable("an unclosed parenthesis")
            return value
        if token in OPERATORS or token == ")":
            raise _Unreadable(f"{token!r} where a word belongs")
        # a word: true where it is part of a name; else it may be an id or a mark
        return True if any(token.lower() in name for name in self.names) else None


def leaves_out(expression: str, names: Iterable[str]) -> bool:
    """Whether ``-k expression`` surely deselects a test whose names are ``names``."""
    reader = _Reader(expression, names)
    try:
        value = reader.either()
        if reader.peek() is not None:
            raise _Unreadable("words after the expression")
    except _Unreadable:
        return False
    return value is False
