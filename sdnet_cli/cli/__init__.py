"""The ``sdnet`` command line: one command per ``sdnet_cli.api`` function; parse options, call it, print.

Each command's parameters are named as its API function names them (the flag keeps the spelling users
know: ``--corruption`` fills ``corruptions``), so a command hands its options over unchanged. torch and
the API are imported inside the commands, so ``--help``, ``--version`` and shell completion start fast.
"""

from . import commands, lam_commands  # noqa: F401  (importing them registers their commands)
from ._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
