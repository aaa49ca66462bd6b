"""The offline subcommands, one module per job: ``recall gen | train | tune | load |
eval`` (offline.cli.gen ... offline.cli.evaluate); the argument groups and steps they share
are defined once in offline.cli.common.

Only the standard library at module level (``recall --help`` stays fast); each command
imports what it needs when it runs. Settings (RECALL_DIM, RECALL_USER_WINDOW, REDIS_URL,
...) come from :class:`recall.config.Settings`.
"""

from __future__ import annotations

from typing import Any

from offline.cli import evaluate, gen, load, train, tune

#: the subcommands, in help order
COMMANDS = (gen, train, tune, load, evaluate)


def add_parser(sub: Any, bench_sub: Any) -> None:
    for command in COMMANDS:
        command.add_parser(sub)
