"""``lstm-stream demo``: a broker, simulated sensors and the real daemon on this machine (see :mod:`.run`),
in parts: the broker (brokers), the sensors, their ledger and the anomaly watcher (sensors), the terminal
(console) and the run itself (run)."""
