"""Atomic writes for reports (the implementation lives in neuralcleanse.files, shared by all writers)."""
from neuralcleanse.files import write_atomic, write_json

__all__ = ["write_atomic", "write_json"]
