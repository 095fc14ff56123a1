"""Every test (and every process it starts) writes user profiles into a temporary parasim home,
never into the real ~/.parasim."""

import os
import tempfile

import pytest

from parasim import profiles


@pytest.fixture(autouse=True, scope="session")
def parasim_home():
    with tempfile.TemporaryDirectory(prefix="parasim-home-") as home:
        previous = os.environ.get(profiles.HOME_VARIABLE)
        os.environ[profiles.HOME_VARIABLE] = home
        yield home
        if previous is None:
            os.environ.pop(profiles.HOME_VARIABLE, None)
        else:
            os.environ[profiles.HOME_VARIABLE] = previous
