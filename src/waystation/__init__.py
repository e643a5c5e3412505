"""Waystation: a self-hosted IoT edge station."""

__version__ = "0.1.0"
