"""The two ways the tool fails: bad input (exit 2, nothing written) and a failed run (exit 1)."""

from __future__ import annotations


class InputError(Exception):
    """The command line, an input file or a setting is unusable. Exit status 2, no traceback."""


class RunError(Exception):
    """Quantizing or evaluating failed after the inputs were accepted. Exit status 1."""
