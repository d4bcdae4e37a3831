"""Experiments: trigger_diagnosis (README.md beside this file)."""
