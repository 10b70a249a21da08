"""The `emflow` command line."""
