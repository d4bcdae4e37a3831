"""Experiments: scan_variants (README.md beside this file)."""
