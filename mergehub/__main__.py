"""`python -m mergehub` runs the CLI."""

import sys

from mergehub.interfaces.cli import main

sys.exit(main())
