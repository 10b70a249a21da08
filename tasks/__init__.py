"""Luigi tasks, one module per stage: thin wrappers that read blocks, call the core, write results."""
