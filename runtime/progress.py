"""A one-line text progress bar on stderr: what runs now and how long is left.

    [#########...........]  45% gemm 512x1024x2048  ~1m10s left

The time left is elapsed · (1 - f) / f for the fraction f of the estimated work done. Drawn
only when enabled (the CLI enables it when stderr is a terminal or on `--progress`); redrawn at
most every `interval_s`, always on the last step.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_CELLS = 20


def duration_text(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def bar_line(fraction: float, label: str, elapsed_s: float) -> str:
    """The text of the bar for `fraction` done after `elapsed_s` seconds."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * BAR_CELLS)
    left = "estimating" if fraction <= 0.0 else \
        f"~{duration_text(elapsed_s * (1.0 - fraction) / fraction)} left"
    if fraction >= 1.0:
        left = f"done in {duration_text(elapsed_s)}"
    return f"[{'#' * filled}{'.' * (BAR_CELLS - filled)}] {fraction:4.0%} {label}  {left}"


class Progress:
    """Progress over `total_weight` units of estimated work."""

    def __init__(self, total_weight: float, enabled: bool, stream: TextIO | None = None,
                 interval_s: float = 0.2):
        self.total_weight = max(total_weight, 1e-12)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.done_weight = 0.0
        self._start_s = time.monotonic()
        self._drawn_s = -float("inf")
        self._width = 0

    def show(self, label: str, partial_weight: float = 0.0, force: bool = False) -> None:
        """Redraw with `label` and `partial_weight` of the running task done."""
        now_s = time.monotonic()
        if not self.enabled or (not force and now_s - self._drawn_s < self.interval_s):
            return
        self._drawn_s = now_s
        fraction = (self.done_weight + partial_weight) / self.total_weight
        line = bar_line(fraction, label, now_s - self._start_s)
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def advance(self, weight: float, label: str) -> None:
        """A task of `weight` finished."""
        self.done_weight += weight
        self.show(label)

    def stop(self) -> None:
        """End the bar's line after a failure, so that an error message starts a line."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def close(self, label: str = "") -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self.done_weight = self.total_weight
            self.show(label, force=True)
            self.stream.write("\n")
            self.stream.flush()
