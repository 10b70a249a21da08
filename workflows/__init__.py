"""Workflows: chains of stages, and what a user asks of them (run, status)."""

from .multicut import STAGES, MulticutSegmentation, StageStatus, progress_reporter, stage_tasks, workflow_status

__all__ = ["STAGES", "MulticutSegmentation", "StageStatus", "progress_reporter", "stage_tasks", "workflow_status"]
