"""The worker's memory budget for its own index moves and whole-catalogue re-tunes
(``RECALL_MEMORY_LIMIT_MB``).

A re-pick of the hash layout moves the items to a new bucket table a slice at a time
(:mod:`recall.lsh.move`): beside the one served, a slice's share of the new table, the
new table's growth when it is larger, and a part's rewrite (+54-58 MB measured at 1M x
64 to a same-size layout, 85 MB estimated; a table built whole beside it was +123). A
worker that re-tunes itself must not push its own container over its memory limit for
that: an OOM kill loses far more than the move gains. So before a move the watch asks
:class:`MoveGuard` whether the worker's resident memory now plus what the move holds at
its peak (``recall.lsh.move.move_bytes``) fits the budget; when not, the move is postponed (a
warning in the log, ``recall_lsh_retunes_postponed_total{reason}``) and tried again
later, when items removed or a smaller layout may let it fit. A cost re-tune of a whole
catalogue is skipped the same way when its child process (:func:`child_bytes`, ~1 GB at
1M x 64, beside the worker in its container: :func:`container_budget`) would not fit, or
when not even the smallest move it could propose would.

The budget: ``RECALL_MEMORY_LIMIT_MB`` when set above 0; unset (-1), the memory limit of
the worker's cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) when it has one;
0, or no limit found: no guard. Only this process's RSS is counted (not the page cache,
nor other processes in the container; the cost re-tune's child has exited when a move
is decided): a container running more than the worker sets the variable to the
worker's share.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

MIB = 2**20
#: cgroup limit files, v2 then v1, read for the default budget
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
#: a v1 cgroup without a limit reports ~2**63 (rounded down to a page): read as none
NO_LIMIT_ABOVE = 2**60


def cgroup_limit(paths: tuple[str, ...] = CGROUP_LIMIT_FILES) -> int | None:
    """The memory limit (bytes) of this process's cgroup: the first of ``paths`` that
    exists and holds a number; None when none does or it says there is no limit (v2
    ``max``, v1 ~2**63)."""
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < NO_LIMIT_ABOVE else None
    return None


def memory_budget(limit_mb: int, cgroup: Callable[[], int | None] = cgroup_limit
                  ) -> int | None:
    """Bytes the worker's RSS may reach during a move, from ``RECALL_MEMORY_LIMIT_MB``
    (``limit_mb``: > 0 MiB, 0 none, -1 the cgroup's limit if any); None: no guard."""
    if limit_mb > 0:
        return limit_mb * MIB
    return cgroup() if limit_mb < 0 else None


def container_budget(limit_mb: int, cgroup: Callable[[], int | None] = cgroup_limit
                     ) -> int | None:
    """Bytes the worker and a whole-catalogue re-tune's child may take together: the
    memory limit of the container (the cgroup's), which the kernel enforces on both;
    None with ``RECALL_MEMORY_LIMIT_MB=0`` (no guard) or no limit found. A value set
    above 0 is the worker's own share, for its moves: the child, another process, is
    held to the container (counting it against the worker's 600 MiB skipped every try
    at 1M x 64, the child alone being ~940 MiB)."""
    return None if limit_mb == 0 else cgroup()


def rss_bytes(status: str = "/proc/self/status") -> int | None:
    """This process's resident memory (VmRSS), bytes; None where it cannot be read."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: the peak RSS of a whole-catalogue cost re-tune's child (stream.tunejobs.
#: tune_cheaper_whole) per item, beyond 6 bytes a dimension (the float32 matrix it tunes
#: and its indexes' float16 one): its tables, ids and queries. 865-920 MiB was measured at
#: 1M x 64 (``python -m devtools.bench_retune_child --items 1000000``, README)
CHILD_ITEM_BYTES = 600


def child_bytes(rows: int, dim: int) -> int:
    """Bytes a whole-catalogue re-tune's child takes at its peak for ``rows`` x ``dim``
    (~940 MiB at 1M x 64): it runs beside the worker, in its container."""
    return rows * (6 * dim + CHILD_ITEM_BYTES)


class MoveGuard:
    """Whether a move that holds ``extra`` bytes at its peak fits the budget beside the
    worker's resident memory now. ``budget`` None: every move fits (no guard)."""

    def __init__(self, budget: int | None,
                 rss: Callable[[], int | None] = rss_bytes) -> None:
        self.budget = budget
        self.rss = rss

    def refusal(self, extra: int, what: str = "the new bucket table and its build"
                ) -> str | None:
        """Why a move holding ``extra`` more bytes (for ``what``) would not fit, or None
        when it does (or there is no budget, or the RSS cannot be read: the guard never
        blocks a move on what it does not know)."""
        if self.budget is None:
            return None
        now = self.rss()
        if now is None or now + extra <= self.budget:
            return None
        return (f"RSS {now / MIB:.0f} MiB + {extra / MIB:.0f} MiB for {what} would exceed "
                f"the memory budget of {self.budget / MIB:.0f} MiB (RECALL_MEMORY_LIMIT_MB "
                f"or the cgroup's limit)")
