"""YAML reading for job files and the data in profiles/.

YAML 1.1 (PyYAML) reads `15e12` and `2.0e9` as strings; parasim's files mean numbers
(DESIGN.md's example job has `tokens: 15e12`), so exponents without a dot or sign are floats.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from parasim.simulator.errors import SpecError


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e9-style numbers as floats."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_text(text: str, source: str, field: str = "job") -> Any:
    """YAML (JSON is a subset); errors name the source, line and column."""
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(field, source, f"malformed YAML{where}: {problem}",
                        "well-formed YAML or JSON") from None
    except ValueError as err:  # a scalar the constructors refuse: a 5000-digit integer, a date
        raise SpecError(field, source, f"unreadable value: {str(err).split(';')[0]}",
                        "well-formed YAML or JSON") from None
    except RecursionError:
        raise SpecError(field, source, "nested too deeply", "well-formed YAML or JSON") from None


def load_data(stream) -> Any:
    """A data file shipped in profiles/ (our own files: errors there are our bugs)."""
    return yaml.load(stream, Loader=Loader)  # noqa: S506
