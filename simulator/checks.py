"""Small validators shared by the specs: each raises `SpecError` naming the field."""

from __future__ import annotations

from parasim.simulator.errors import SpecError


def require_int(field: str, value: object, minimum: int = 1) -> None:
    """`value` must be an integer >= minimum (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, value, "must be an integer", f"an integer >= {minimum}")
    if value < minimum:
        raise SpecError(field, value, f"must be at least {minimum}", f"an integer >= {minimum}")


def require_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(field, value, "unknown choice", ", ".join(choices))


def require_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise SpecError(field, value, "must be true or false", "true, false")


def require_positive(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError(field, value, "must be a positive number", "a number > 0")


def divisors(n: int) -> list[int]:
    """All positive divisors of n, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]
