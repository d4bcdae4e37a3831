"""Experiments: unlearning_variants (README.md beside this file)."""
