"""One-off studies: `python -m benchmarks.experiments.<topic>.<name>` (benchmarks/experiments/README.md)."""
