"""The ``recall`` command: the entry point, and the only module that imports every layer.

Each layer contributes its subcommands through ``add_parser(subparsers, bench_subparsers)``
in its own command module (``stream.cli``, ``offline.cli``, ``devtools.cli``), importing
only the standard library at module level so ``recall --help`` stays fast. Library code
raises its own error types; this module maps them to a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from devtools.errors import DevtoolsError
from offline.errors import OfflineError
from recall.config import SettingsError
from stream.preflight import StartupError

#: modules that contribute subcommands, in help order
COMMAND_MODULES = ("stream.cli", "offline.cli", "devtools.cli")
#: subcommands that need only their own module: ``recall worker`` imports neither the
#: offline nor the dev-tools command modules (a restarted worker's start is its users'
#: wait; they cost 30-120 ms, most of it on a loaded host)
ALONE = {"worker": "stream.cli"}

#: errors that mean "this input cannot be used": printed as one line, exit status 2
USER_ERRORS = (SettingsError, OfflineError, DevtoolsError, StartupError)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of ``command``'s module (:data:`ALONE`)."""
    parser = argparse.ArgumentParser(
        prog="recall", description="Streaming real-time candidate recall: the worker, "
        "the offline jobs, the local stack and the benchmarks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks (print figures, end with one JSON line)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in (ALONE[command],) if command in ALONE else COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub, bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
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
