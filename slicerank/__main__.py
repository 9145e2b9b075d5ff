"""``python -m slicerank`` runs the console script."""

import sys

from slicerank.cli import main

sys.exit(main())
