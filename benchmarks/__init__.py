"""The measurements behind docs/results.md: run each as `python -m benchmarks.<name>` (benchmarks/README.md)."""
