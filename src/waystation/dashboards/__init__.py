"""Dashboards: per-user or per-station pages of widgets over a station's channels, devices and log."""
