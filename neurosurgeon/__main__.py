"""``python -m neurosurgeon``: the command line (see :mod:`neurosurgeon.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
