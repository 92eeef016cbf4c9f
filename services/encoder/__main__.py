"""``python -m services.encoder``: the same as ``xdrec serve encoder``."""

import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "encoder", *sys.argv[1:]]))
