"""``python -m services.ranker``: the same as ``xdrec serve ranker``."""

import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "ranker", *sys.argv[1:]]))
