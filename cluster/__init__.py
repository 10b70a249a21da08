"""Running task graphs: the local or central Luigi scheduler, worker counts, progress, exit status.

This package is the only code that knows about schedulers and job systems.
"""

from .luigid import SchedulerError, SchedulerState, scheduler_status, start_scheduler, stop_scheduler
from .runner import RunReport, run_tasks

__all__ = ["RunReport", "SchedulerError", "SchedulerState", "run_tasks", "scheduler_status", "start_scheduler", "stop_scheduler"]
