"""Allow ``python -m fracture_lib``."""

import sys

from fracture_lib.cli import main

sys.exit(main())
