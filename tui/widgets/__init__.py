"""Self-contained widgets of the TUI."""
