"""Name -> implementation tables that a layer owns and the command line reads its ``choices`` from.

A :class:`Registry` is a ``dict``; its ``repr``/``str`` show only the names, as the tuples of names they
replace did, so ``f"one of {STRATEGIES}"`` still reads ``one of ('geometric', 'copy', ...)``. Adding an entry
is writing one function (or class) and one table line.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(dict[str, T]):
    """A table of named implementations of one contract; ``lookup`` names what it expected when it fails."""

    def __init__(self, what: str, entries: dict[str, T]) -> None:
        super().__init__(entries)
        self.what = what

    def __repr__(self) -> str:
        return repr(tuple(self))

    __str__ = __repr__

    def lookup(self, name: str) -> T:
        """The entry called ``name``; ``ValueError`` naming the known names otherwise."""
        if name not in self:
            raise ValueError(f"{self.what} must be one of {tuple(self)}, got {name!r}")
        return self[name]
