"""Health, readiness, metrics and status views."""
