"""The station's link to a cloud service (PROTOCOLS §7): claim, auth, JSON-RPC both ways, and a fake cloud."""
