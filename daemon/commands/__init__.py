"""Commands: the ``lstm-stream`` command line and what it runs besides the daemon (demo, offline
training and evaluation, NAB, benchmarks). The top layer: it may import everything else in daemon/,
and nothing imports it (except ``python -m daemon``)."""
