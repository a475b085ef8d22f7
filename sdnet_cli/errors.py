"""Errors a user can cause, as one family: the CLI prints these as one line and exits 2.

Anything else raised inside the library is a bug and keeps its traceback (exit 1). Messages name
the Python API's parameters (``n_examples``); ``parameter`` says which one, so a front end can
speak in its own terms (the CLI says ``--n-examples``).
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input: an option value, a file that cannot be read, a model that does not exist.

    A ``ValueError`` subclass so plain ``except ValueError`` callers keep working.
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped work that saved its progress; the message says how to continue."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter
