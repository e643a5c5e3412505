"""Client binding (PROTOCOLS §3) and, later, BLE provisioning."""
