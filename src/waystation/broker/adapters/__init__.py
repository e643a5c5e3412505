"""Broker admin adapters: each applies `BrokerAccount`s to one kind of broker."""
