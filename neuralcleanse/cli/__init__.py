"""Command line: train, attack, scan, scan-many, mitigate, report, demo.

Exit codes: 0 clean verdict (or success), 3 infected verdict, 4 inconclusive verdict, 2 bad input, 1 crash.
"""
from neuralcleanse.cli.app import EXIT_BAD_INPUT, EXIT_CLEAN, EXIT_CRASH, EXIT_INCONCLUSIVE, EXIT_INFECTED, main

# Importing a command's module registers it on `main`.
from neuralcleanse.cli import attack, demo, mitigate, report, scan, scan_many, train  # noqa: F401

__all__ = ["EXIT_BAD_INPUT", "EXIT_CLEAN", "EXIT_CRASH", "EXIT_INCONCLUSIVE", "EXIT_INFECTED", "main"]
