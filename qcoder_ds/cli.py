"""`qcoder`: the command line. Subcommands live in ``qcoder_ds.commands.<name>``."""

from __future__ import annotations

import argparse
import importlib
import sys

from qcoder_ds import __version__
from qcoder_ds.commands import COMMANDS
from qcoder_ds.errors import QcoderError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcoder", description="A local, offline data-science copilot on the CPU."
    )
    parser.add_argument("--version", action="version", version=f"qcoder-ds {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"qcoder_ds.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"qcoder_ds.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QcoderError as e:
        print(f"qcoder: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qcoder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
