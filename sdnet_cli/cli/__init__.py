"""The ``sdnet`` command line: one command per ``sdnet_cli.api`` function; parse options, call it, print.

Each command lists its options, builds the API's records from them (``ModelSpec``, ``DataSpec``,
``RunSpec``) and passes every value by name to its API function; an option a run cannot use is refused
(tests/test_option_reach.py walks them all). torch and the API are imported inside the commands, so
``--help``, ``--version`` and shell completion start fast.
"""

from . import commands, lam_commands  # noqa: F401  (importing them registers their commands)
from ._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
