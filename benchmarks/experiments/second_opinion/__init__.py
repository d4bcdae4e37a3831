"""Experiments: second_opinion (README.md beside this file)."""
