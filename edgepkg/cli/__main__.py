import sys

from edgepkg.cli import main

sys.exit(main())
