"""Running task graphs: the local or central Luigi scheduler, worker counts, progress, exit status.

This package is the only code that knows about schedulers and job systems.
"""

from .runner import RunReport, run_tasks

__all__ = ["RunReport", "run_tasks"]
