"""Stations: the default station created on first start, and station-wide settings."""
