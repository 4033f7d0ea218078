"""Outputs: Prometheus metrics (instruments, per-stream exposition, the HTTP server), anomaly events and
forecasts as JSON, Home Assistant discovery. Publishing goes through a function the service hands in:
outputs import settings and the shared leaves only, never ingest or the service."""
