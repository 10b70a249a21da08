"""Human-readable reports: the evaluation report against groundtruth (`emflow.report.evaluation`)
and the run report (`emflow.report.run`).

Static HTML pages with their figures beside them (PNG and SVG files) and a JSON file of all numbers.
The modules are imported where used: the evaluation report's figures need matplotlib, whose import
alone costs 0.6 s, and the run report, written at the end of every run, does not.
"""
