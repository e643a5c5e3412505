"""Encrypted snapshots of the station's configuration and credentials (PROTOCOLS §10, docs/backup.md)."""
