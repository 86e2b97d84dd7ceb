"""Training and evaluation, callable without the CLI."""
