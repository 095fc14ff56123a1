"""Small validators shared by the specs: each raises `SpecError` naming the field.

`require_number` is the one check of "a finite number in range" that every number a user
gives passes through (job files, suite files, fitted profiles, command-line flags); the others
build on it.
"""

from __future__ import annotations

import math

from parasim.simulator.errors import SpecError

MAX_COUNT = 2**40  # the largest integer any count may be (sizes, degrees, nodes, batches):
#                    far above every real model and cluster, and small enough that no float
#                    product of counts overflows and divisors() stays fast


def number_range(minimum: float | None = None, maximum: float | None = None, *,
                 above: bool = False, noun: str = "a number") -> str:
    """The valid range in words: `a number > 0`, `a number from 0 to 1`, `a finite number`."""
    if minimum is not None and maximum is not None and not above:
        return f"{noun} from {_text(minimum)} to {_text(maximum)}"
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if above else '>='} {_text(minimum)}")
    if maximum is not None:
        parts.append(f"<= {_text(maximum)}")
    return f"{noun} " + " and ".join(parts) if parts else f"a finite {noun.split()[-1]}"


def _text(x: float) -> str:
    """A bound as a person writes it: 604800, 0.99, 1e+18."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e9 else f"{x:g}"


def require_number(field: str, value: object, minimum: float | None = None,
                   maximum: float | None = None, *, above: bool = False,
                   valid: str | None = None, noun: str = "a number") -> float:
    """`value` must be a finite real number (not a bool, not NaN or infinite) from `minimum`
    (strictly above it with `above`) to `maximum`; returned as a float. The message's valid
    range is `valid`, else the range in words (`noun`: "a number", "an integer")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, value, "missing" if value is None else "must be a number",
                        valid or number_range(minimum, maximum, above=above, noun=noun))
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(field, value, "must be a finite number",
                        valid or number_range(minimum, maximum, above=above, noun=noun))
    if minimum is not None and (number <= minimum if above else number < minimum):
        why = "must be positive" if above and minimum == 0 else \
            "must not be negative" if minimum == 0 else \
            f"must be above {_text(minimum)}" if above else f"must be at least {_text(minimum)}"
        raise SpecError(field, value, why, valid or number_range(minimum, above=above,
                                                                   noun=noun))
    if maximum is not None and number > maximum:
        raise SpecError(field, value, f"must be at most {_text(maximum)}",
                        valid or number_range(minimum, maximum, above=above, noun=noun))
    return number


def require_int(field: str, value: object, minimum: int = 1, maximum: int | None = None) -> None:
    """`value` must be an integer from `minimum` to `maximum` (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, value, "must be an integer", f"an integer >= {minimum}")
    if value < minimum:
        raise SpecError(field, value, f"must be at least {minimum}", f"an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise SpecError(field, value, f"is too large (at most {maximum:,})",
                        f"an integer from {minimum} to {maximum:,}")


def require_count(field: str, value: object, minimum: int = 1, maximum: int = MAX_COUNT) -> None:
    """A count a user gives (a size, a degree, a number of nodes): an integer from `minimum` to
    `maximum` (default MAX_COUNT)."""
    require_int(field, value, minimum, maximum)


def require_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(field, value, "unknown choice", ", ".join(choices))


def require_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise SpecError(field, value, "must be true or false", "true, false")


def require_positive(field: str, value: object) -> float:
    """A finite number > 0."""
    return require_number(field, value, 0, above=True)


def require_non_negative(field: str, value: object) -> float:
    """A finite number >= 0."""
    return require_number(field, value, 0)


def divisors(n: int) -> list[int]:
    """All positive divisors of n, ascending (O(sqrt n))."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]
