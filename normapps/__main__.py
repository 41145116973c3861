"""``python -m normapps``: the same as the ``normapps`` command."""

import sys

from normapps.cli.main import main

sys.exit(main())
