"""Seconds that remember where they came from: measured, interpolated or analytic."""

from __future__ import annotations

from dataclasses import dataclass, fields

from parasim.simulator.profile import Source


@dataclass(frozen=True)
class Sourced:
    """A duration split by source; adds and scales like a number."""

    measured_s: float = 0.0
    interpolated_s: float = 0.0
    analytic_s: float = 0.0

    @staticmethod
    def of(seconds: float, source: Source) -> Sourced:
        return Sourced(**{f"{source}_s": seconds})

    @property
    def total_s(self) -> float:
        return self.measured_s + self.interpolated_s + self.analytic_s

    def __add__(self, other: Sourced) -> Sourced:
        return Sourced(self.measured_s + other.measured_s,
                       self.interpolated_s + other.interpolated_s,
                       self.analytic_s + other.analytic_s)

    def __mul__(self, factor: float) -> Sourced:
        return Sourced(self.measured_s * factor, self.interpolated_s * factor,
                       self.analytic_s * factor)

    __rmul__ = __mul__

    def scaled_to(self, seconds: float) -> Sourced:
        """`seconds` split in this duration's proportions (a bubble inherits its stage's)."""
        total = self.total_s
        return self * (seconds / total) if total > 0 else Sourced.of(seconds, "analytic")

    def shares(self) -> dict[str, float]:
        total = self.total_s or 1.0
        return {f.name.removesuffix("_s"): getattr(self, f.name) / total for f in fields(self)}


def total(parts) -> Sourced:
    out = Sourced()
    for part in parts:
        out = out + part
    return out
