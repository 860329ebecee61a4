"""``python -m device_updater`` runs the ``edge-updater`` command line."""

import sys

from device_updater.cli import main

sys.exit(main())
