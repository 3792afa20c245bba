"""``python -m LinGuinELib`` runs the ``linguine`` command line."""

import sys

from LinGuinELib.cli import main

sys.exit(main())
