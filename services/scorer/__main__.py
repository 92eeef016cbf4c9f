"""``python -m services.scorer``: the same as ``xdrec serve scorer``."""

import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "scorer", *sys.argv[1:]]))
