"""The operations log: what happened at a station, in words people read (rules, OTA, devices, notes)."""
