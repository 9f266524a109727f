"""``python -m selfsup ...``: the ``selfsup`` command line, for when its script is not on PATH."""

import sys

from selfsup.cli import main

sys.exit(main())
