"""`python -m mtlsweep` is the `mtlsweep` command."""
import sys

from mtlsweep.search.cli import main

sys.exit(main())
