"""``python -m captum_unicam``: the ``captum-unicam`` command line."""

import sys

from captum_unicam.cli import main

if __name__ == "__main__":
    sys.exit(main())
