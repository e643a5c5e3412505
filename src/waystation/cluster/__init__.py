"""Several station workers on one PostgreSQL database and one MQTT broker (docs/scaling.md)."""
