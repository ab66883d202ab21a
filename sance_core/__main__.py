"""``python -m sance_core`` is the ``sance`` command."""

import sys

from sance_core.cli import main

sys.exit(main())
