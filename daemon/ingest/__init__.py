"""Ingest: MQTT messages in (the connection, the receive path, payload parsing, the receiver process)
and samples out to a queue. Imports settings and the shared leaves only, never outputs or the service."""
