"""``python -m daemon``: the ``lstm-stream`` command line."""

import sys

from daemon.commands.cli import main

sys.exit(main())
