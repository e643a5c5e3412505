"""Flows: the generic MQTT gateway (PROTOCOLS §4): a database row maps topic → schema → store or POST."""
