"""``python -m services.ranker``: the same as ``xdrec serve ranker``, without the command line."""

from services.ranker.main import main

if __name__ == "__main__":
    main()
