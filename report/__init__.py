"""Human-readable reports: the evaluation report (against groundtruth) and the run report (without).

Static HTML pages with PNG figures beside them (matplotlib, Agg canvas) and a JSON file of all numbers.
"""

from .evaluation import ErrorView, read_error_view, write_evaluation_report
from .run import write_run_report

__all__ = ["ErrorView", "read_error_view", "write_evaluation_report", "write_run_report"]
