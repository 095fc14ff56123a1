"""`python -m parasim`: the same front door as the `parasim` command."""

from parasim.cli import run

run()
