"""BLE provisioning (PROTOCOLS §8): the transport-only bridge process and the station side that drives it."""
