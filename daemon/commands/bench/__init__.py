"""``lstm-stream bench e2e``: the daemon end to end through a real Mosquitto (see :mod:`.e2e`), in parts:
options, common (ports, processes, statistics), broker, publishers, subscribers (the daemon and a bare
paho client), scrape (/metrics and Prometheus), phases, report."""
