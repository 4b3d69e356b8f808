"""Continuous training as a Dagster asset graph."""
