"""The broker: the embedded child process the station supervises, and (later) credential sync."""
