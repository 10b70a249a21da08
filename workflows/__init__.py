"""Workflows: chains of stages (`segmentation`), and what a user asks of them (run, status, demo, train)."""
