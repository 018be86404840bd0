"""CLI sub-commands: each module turns arguments into a typed config and calls the engine.

The top of the engine: may import every stage below it, and nothing imports it but ``engine.cli``.
"""
