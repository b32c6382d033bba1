"""``python -m tfrcnn.cli``: the ``tfrcnn`` command."""

import sys

from tfrcnn.cli.app import main

sys.exit(main())
