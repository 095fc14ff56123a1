"""The three kinds of failure (DESIGN.md, Style).

- `SpecError`: the user's input is wrong. The message names the field, the value, why it is
  wrong and what would be valid; the CLI prints it as one line and exits with status 2.
- `Infeasible`: a well-formed layout that cannot run (does not fit, cannot be split). A normal
  outcome of a search, counted by the planner.
- `assert`: our own bug.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from difflib import get_close_matches


class ParasimError(Exception):
    """Base of the errors that are reported to the user as one line."""

    exit_status = 2  # of the `parasim` command that ends with it


class SpecError(ParasimError, ValueError):
    """Bad input: `field=value: why; valid: ...`."""

    def __init__(self, field: str, value: object, why: str, valid: str | None = None):
        self.field, self.value, self.why, self.valid = field, value, why, valid
        message = f"{field}={_shown(value)}: {why}"
        if valid:
            message += f"; valid: {valid}"
        super().__init__(_one_line(message))


MAX_SHOWN = 200  # characters of a value a message shows


def _shown(value: object) -> str:
    """The value as a message shows it: numbers as written, huge integers in e-notation,
    anything else as its repr, cut at MAX_SHOWN characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**16:
        exponent = math.log10(abs(value))  # exact enough, and no str() of a huge integer
        mantissa = 10 ** (exponent - math.floor(exponent))
        return f"{'-' if value < 0 else ''}{mantissa:.3f}e+{math.floor(exponent)}"
    text = str(value) if isinstance(value, (int, float)) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _one_line(text: str) -> str:
    """A message is one line on stderr: line breaks in names or values are shown escaped."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class Infeasible(ParasimError):
    """A layout that is well formed but cannot run; `reason` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(_one_line(reason))


def suggest(name: str, choices: Iterable[str], limit: int = 8) -> str:
    """What to offer after an unknown name: the close matches first, else the whole list."""
    choices = sorted(choices)
    close = get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(close) + "?"
    shown = ", ".join(choices[:limit])
    return shown + (", ..." if len(choices) > limit else "")
