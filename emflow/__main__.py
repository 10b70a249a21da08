"""`python -m emflow` is the `emflow` command."""

from emflow.cli.main import command

command()
