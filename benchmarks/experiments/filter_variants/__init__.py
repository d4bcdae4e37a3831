"""Experiments: filter_variants (README.md beside this file)."""
