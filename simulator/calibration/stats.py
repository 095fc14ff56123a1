"""Error statistics of predicted against measured step times."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ErrorSummary:
    """Relative errors (predicted / measured - 1) of a group of runs, in percent."""

    n: int
    mean_ape_pct: float  # mean absolute percentage error (MAPE)
    median_ape_pct: float
    worst_ape_pct: float  # the largest absolute percentage error
    bias_pct: float  # signed mean: negative = predictions too fast

    @staticmethod
    def of(predicted_s: list[float], measured_s: list[float]) -> ErrorSummary | None:
        """None for an empty group."""
        if not predicted_s:
            return None
        errors = [p / m - 1 for p, m in zip(predicted_s, measured_s, strict=True)]
        ape = [abs(e) for e in errors]
        return ErrorSummary(n=len(errors), mean_ape_pct=100 * statistics.fmean(ape),
                            median_ape_pct=100 * statistics.median(ape),
                            worst_ape_pct=100 * max(ape), bias_pct=100 * statistics.fmean(errors))

    def line(self) -> str:
        return (f"mean {self.mean_ape_pct:.2f}%, median {self.median_ape_pct:.2f}%, worst "
                f"{self.worst_ape_pct:.1f}%, bias {self.bias_pct:+.2f}% over {self.n} runs")
