"""``python -m dualkit``: the same as the ``dualkit`` command."""

import sys

from dualkit.cli import main

sys.exit(main())
