"""Simulated devices: a fleet that speaks the real device protocol, for demos, tests and benchmarks."""
