"""An app module that exits as it is imported (a script's sys.exit at its top level):
the CLI ended without a word."""

import sys

sys.exit(3)
