"""Pages served to browsers (the full UI arrives with the web UI issue)."""
