"""``python -m services.scorer``: the same as ``xdrec serve scorer``, without the command line."""

from services.scorer.main import main

if __name__ == "__main__":
    main()
