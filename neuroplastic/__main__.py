"""``python -m neuroplastic`` = the ``neuroplastic`` command."""

import sys

from .cli import main

sys.exit(main())
