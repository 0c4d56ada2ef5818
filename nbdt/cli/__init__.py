"""Command-line entry points, one module per command; each has ``main(argv) -> exit status``."""
