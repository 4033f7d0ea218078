"""The lstm-stream service: MQTT in, engine, Prometheus and MQTT out, under systemd."""
