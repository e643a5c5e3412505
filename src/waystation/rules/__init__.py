"""Rules: conditions on channels and device events, their firings and actions, and alerts."""
