"""The three kinds of failure (DESIGN.md, Style).

- `SpecError`: the user's input is wrong. The message names the field, the value, why it is
  wrong and what would be valid; the CLI prints it as one line and exits with status 2.
- `Infeasible`: a well-formed layout that cannot run (does not fit, cannot be split). A normal
  outcome of a search, counted by the planner.
- `assert`: our own bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches


class ParasimError(Exception):
    """Base of the errors that are reported to the user as one line."""

    exit_status = 2  # of the `parasim` command that ends with it


class SpecError(ParasimError, ValueError):
    """Bad input: `field=value: why; valid: ...`."""

    def __init__(self, field: str, value: object, why: str, valid: str | None = None):
        self.field, self.value, self.why, self.valid = field, value, why, valid
        shown = value if isinstance(value, (int, float)) else repr(value)
        message = f"{field}={shown}: {why}"
        if valid:
            message += f"; valid: {valid}"
        super().__init__(message)


class Infeasible(ParasimError):
    """A layout that is well formed but cannot run; `reason` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def suggest(name: str, choices: Iterable[str], limit: int = 8) -> str:
    """What to offer after an unknown name: the close matches first, else the whole list."""
    choices = sorted(choices)
    close = get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(close) + "?"
    shown = ", ".join(choices[:limit])
    return shown + (", ..." if len(choices) > limit else "")
