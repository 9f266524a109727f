"""``selfsup ARGS`` as a script, for launchers that take a script path (torchrun)."""

import sys

from selfsup.cli import main

sys.exit(main(sys.argv[1:]))
