"""Firmware storage, signed downloads and OTA rollouts (docs/ota.md)."""
