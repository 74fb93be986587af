"""Metrics: pure functions on arrays plus the metadata the runner and report need."""
