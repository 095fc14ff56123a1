"""The runtime's own failure: a measurement that did not complete (no torch here).

Bad input is `simulator.errors.SpecError` (checked before anything starts); a run that starts
and then fails, dies or hangs is a MeasurementError, with the failing rank's traceback.
"""

from __future__ import annotations

from parasim.simulator.errors import ParasimError


class MeasurementError(ParasimError):
    """A measuring process failed, died or ran past its deadline; `detail` holds its traceback."""

    exit_status = 1  # the run failed (bad input is 2)

    def __init__(self, message: str, detail: str = ""):
        self.detail = detail
        super().__init__(message)
