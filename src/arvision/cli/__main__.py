"""``python -m arvision.cli``: the same as ``python -m arvision`` and the ``arvision`` script."""

import sys

from arvision.cli import main

sys.exit(main())
