"""`python -m diffusers_multitalk ...` runs the `multitalk` command."""

import sys

from .cli import main


sys.exit(main())
