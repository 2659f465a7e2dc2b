"""``python -m neurolens``: the same command line as the ``neurolens`` console script."""

import sys

from neurolens.cli import main

sys.exit(main())
