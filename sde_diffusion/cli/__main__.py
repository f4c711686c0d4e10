"""``python -m sde_diffusion.cli``."""

import sys

from . import main

sys.exit(main())
