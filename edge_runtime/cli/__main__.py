"""``python -m edge_runtime.cli``: the ``edge-node`` command."""

import sys

from edge_runtime.cli.main import main

sys.exit(main())
