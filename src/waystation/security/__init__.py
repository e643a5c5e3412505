"""Abuse limits shared by every slice: request rate limits and request body size limits."""
