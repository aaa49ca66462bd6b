"""The ``recall`` command: one subcommand per job, each defined in the module that owns it.

A command module exposes ``add_parser(subparsers)``; it must import only the standard
library at module level (heavy imports go inside the command function) so ``recall
--help`` stays fast. The parser sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

#: modules that contribute subcommands, in help order
COMMAND_MODULES = [
    "stream.cli",  # worker, demo, bench e2e
    "offline.cli",  # gen, train, tune, load, eval
    "recall.bench_index",  # bench index
    "recall.bench_store",  # bench store
]


class CommandError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


def settings_from_env() -> Any:
    """``Settings.from_env()``, a bad variable reported as a CommandError naming it."""
    from recall.config import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recall", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks (print figures, end with one JSON line)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
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
    except CommandError as exc:
        print(f"recall {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
