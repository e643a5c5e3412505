"""The station's connection to its broker: one link, topic dispatch, publish."""
