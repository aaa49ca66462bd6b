"""The ``recall`` command: the entry point, and the only module that imports every layer.

Each layer contributes its subcommands through ``add_parser(subparsers, bench_subparsers)``
in its own command module (``stream.cli``, ``offline.cli``, ``devtools.cli``), importing
only the standard library at module level so ``recall --help`` stays fast. Library code
raises its own error types; this module maps them to a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from devtools import cli as devtools_cli
from devtools.errors import DevtoolsError
from offline import cli as offline_cli
from offline.errors import OfflineError
from recall.config import SettingsError
from stream import cli as stream_cli
from stream.preflight import StartupError

#: modules that contribute subcommands, in help order
COMMAND_MODULES = (stream_cli, offline_cli, devtools_cli)

#: errors that mean "this input cannot be used": printed as one line, exit status 2
USER_ERRORS = (SettingsError, OfflineError, DevtoolsError, StartupError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recall", description="Streaming real-time candidate recall: the worker, "
        "the offline jobs, the local stack and the benchmarks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks (print figures, end with one JSON line)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(sub, bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"recall {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
