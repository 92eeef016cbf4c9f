"""``python -m trainer ...`` = ``xdrec train ...``; the form torchrun launches for data parallelism."""

import argparse
import sys

from trainer import command


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer")
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *sys.argv[1:]])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
