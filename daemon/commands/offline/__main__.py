"""``python -m daemon.commands.offline``: run one offline command."""

import sys

from . import main

sys.exit(main())
