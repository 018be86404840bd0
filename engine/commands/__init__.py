"""CLI sub-commands: each module turns arguments into a typed config and calls the engine."""
