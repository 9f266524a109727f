"""``python -m selfsup.cli ...``: the command line."""

import sys

from selfsup.cli import main

sys.exit(main())
