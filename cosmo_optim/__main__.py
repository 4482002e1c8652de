"""`python -m cosmo_optim`: the command line."""

import sys

from cosmo_optim.cli import main

sys.exit(main())
