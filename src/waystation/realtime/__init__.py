"""Realtime delivery of bus events to people: Server-Sent Events (and later WebSockets)."""
