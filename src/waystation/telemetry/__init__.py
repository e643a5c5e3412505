"""Telemetry: channels, datapoints, rollups, experiments, and the ingest hot path."""
