"""``python -m daemon.offline``: run one offline command."""

import sys

from . import main

sys.exit(main())
