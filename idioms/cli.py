"""The `nin` subcommands of the idioms driver."""


def add_commands(sub) -> None:
    """Add this driver's subcommands to the `nin` parser's subparsers (nin/cli.py calls it)."""
