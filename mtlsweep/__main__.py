"""`python -m mtlsweep` is the `mtlsweep` command."""
import sys

from mtlsweep.app.cli import main

sys.exit(main())
