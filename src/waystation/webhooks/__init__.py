"""Outgoing HTTP: durable deliveries (flow endpoints now, webhooks later) with retries and dead-letter."""
