"""Allow ``python -m fracture_lib``."""

import sys

from fracture_lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
