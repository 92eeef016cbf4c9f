"""``python -m services.scorer``: the same as ``xdrec serve scorer``, without the command line."""

from services.common.signals import install_early_stop

install_early_stop()  # before the imports below: a SIGTERM must stop even a starting process

from services.scorer.main import main  # noqa: E402

if __name__ == "__main__":
    main()
