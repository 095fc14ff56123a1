"""Data only: device datasheets, cluster presets, the model catalog and cost-model constants.

A Python package so that the files are found the same way from a checkout and after
`pip install`: `profiles.path("gpus.yaml")`.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def path(name: str) -> Traversable:
    """A data file shipped in this package."""
    return files(__name__).joinpath(name)
