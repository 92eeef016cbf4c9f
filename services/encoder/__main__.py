"""``python -m services.encoder``: the same as ``xdrec serve encoder``, without the command line."""

from services.encoder.main import main

if __name__ == "__main__":
    main()
