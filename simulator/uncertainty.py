"""Prediction intervals for step time, from calibration residuals.

A profile carries the spread of its residuals r = log(measured / predicted) over the runs it
was calibrated on (`ResidualBand`: their 5th and 95th percentiles). A prediction's interval
applies that band (the empirical 90% interval of the calibration runs, Hyndman & Athanasopoulos,
"Forecasting: Principles and Practice", 3rd ed., §5.5, empirical quantiles of residuals), with
two stated rules:

1. Share: the band describes times from the profile's analytic cost model. Seconds that come
   from a measured profile (measured or interpolated) keep the errors of composing them
   (overlaps, schedule, fixed costs) but lose the efficiency error: they are given
   MEASURED_BAND_SHARE of the band, an assumption, not a measurement. With a share a of the
   step analytic, the band's log-bounds are scaled by a + MEASURED_BAND_SHARE·(1 - a).
2. Containment: the interval always contains the point prediction (a band that lies wholly
   above or below zero, as the biased uncalibrated model's does, is widened to reach it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MEASURED_BAND_SHARE = 0.5  # share of the band given to measured seconds (rule 1)


@dataclass(frozen=True, kw_only=True)
class ResidualBand:
    """The spread of log(measured / predicted) over a profile's calibration runs."""

    log_low: float  # 5th percentile of the log-ratios
    log_high: float  # 95th percentile
    runs: int  # calibration runs they come from (0: no calibration, a zero-width band)
    source: str  # which runs and which model, in words
    calibrated: bool = False  # the residuals of the profile's own fit (not of an unfitted one)

    def __post_init__(self) -> None:
        assert self.log_low <= self.log_high, (self.log_low, self.log_high)


NO_BAND = ResidualBand(log_low=0.0, log_high=0.0, runs=0, source="none")


def band_of(log_ratios: list[float], source: str, calibrated: bool, low_percent: float = 5,
            high_percent: float = 95) -> ResidualBand:
    """The 5th and 95th percentiles (or others; linear interpolation between order
    statistics, numpy's default) of log(measured / predicted) over calibration runs."""
    assert log_ratios, "no residuals"
    ordered = sorted(log_ratios)
    return ResidualBand(log_low=_percentile(ordered, low_percent),
                        log_high=_percentile(ordered, high_percent),
                        runs=len(ordered), source=source, calibrated=calibrated)


def _percentile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    lo = math.floor(position)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def step_band(band: ResidualBand, analytic_share: float) -> tuple[float, float]:
    """(low, high) factors on the predicted step time: rules 1 and 2 of the module."""
    share = min(max(analytic_share, 0.0), 1.0)
    weight = share + MEASURED_BAND_SHARE * (1.0 - share)
    return math.exp(min(band.log_low, 0.0) * weight), math.exp(max(band.log_high, 0.0) * weight)


def interval_source(band: ResidualBand) -> str:
    """What a prediction's interval is, in words: the band's runs, or why there is none."""
    if band.runs == 0:
        return band.source if band.source != "none" else "no calibration runs: no interval"
    return band.source if band.calibrated else f"uncalibrated: {band.source}"
