"""``python -m LinGuinELib`` runs the ``linguine`` command line."""

import sys

from .cli import main

sys.exit(main())
