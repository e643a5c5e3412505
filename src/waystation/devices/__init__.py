"""Devices: types, CRUD, the MQTT device protocol (PROTOCOLS §2), presence and commands."""
