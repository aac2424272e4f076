"""`tollgate`: the command line (serve, check-config, admin commands, replay, reprice)."""

from runtime.cli.commands import main

__all__ = ["main"]
