"""Workflows: chains of stages, and what a user asks of them (run, status)."""

from .multicut import MulticutSegmentation, StageStatus, progress_reporter, stage_status, workflow_stages, workflow_status

__all__ = ["MulticutSegmentation", "StageStatus", "progress_reporter", "stage_status", "workflow_stages", "workflow_status"]
