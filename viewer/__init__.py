"""`emflow view`: an emflow output in neuroglancer, served from this machine.

`emflow.viewer.serve` holds the servers (it needs the ``neuroglancer`` package); this package's
top level only the command, so that the CLI imports without it.
"""

from .command import add_view_arguments, view_command

__all__ = ["add_view_arguments", "view_command"]
