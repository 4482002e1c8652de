"""`python -m cosmo_optim`: the command line."""

import sys

from cosmo_optim.cli import main

__all__: list[str] = []  # a script, not a module to import from

sys.exit(main())
