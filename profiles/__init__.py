"""Data only: device datasheets, cluster presets, the model catalog and cost-model constants.

A Python package (installed as `parasim.profiles`) so that the files are found the same way
from a checkout and after `pip install`: `profiles.path("gpus.yaml")`. Profiles a user
measures (`parasim profile`) or fits (`parasim calibrate`) live in the user's parasim folder,
`home()`, and are found by name there before the packaged ones (`locations`).
"""

import os
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

HOME_VARIABLE = "PARASIM_HOME"


def path(name: str) -> Traversable:
    """A data file shipped in this package."""
    return files(__name__).joinpath(name)


def home() -> Path:
    """The user's parasim folder: $PARASIM_HOME, else ~/.parasim."""
    given = os.environ.get(HOME_VARIABLE)
    return Path(given).expanduser() if given else Path.home() / ".parasim"


def locations(kind: str) -> tuple[Path, ...]:
    """Where profiles of `kind` (measured or fitted) are looked up by name, in order: the
    user's folder, then the ones shipped with parasim."""
    return home() / kind, Path(str(path(kind)))
