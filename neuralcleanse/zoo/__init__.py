"""Scanning many models in one go (`neuralcleanse scan-many`): the list of jobs (manifest), one
model's scan (worker), running them locally or on Ray (runner), the journal that lets a batch
resume, and the summary files (summary)."""
