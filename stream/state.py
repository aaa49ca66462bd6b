"""The worker's in-memory state: the served LSH index, the user cache, popular items.

- :class:`IndexSlot` holds the index being served with its version; a rebuild builds a
  new :class:`~recall.lsh.LSHIndex` aside and :meth:`IndexSlot.swap` replaces it in one
  assignment, so a request never sees a half-loaded index.
- :class:`UserCache` holds the :class:`~recall.userstate.UserState` of users of this worker's
  ``clicks``/``recall-requests`` partitions (co-partitioned, so this worker is the only
  writer of those users); entries remember their partition and are dropped when the
  partition is revoked. Memory is authoritative, Redis is the durable copy. It is
  bounded: :meth:`UserCache.trim` drops the least recently used states beyond its limit
  (``RECALL_USER_CACHE_USERS``). Only the caller knows when that is safe (no click batch
  between applying a user's clicks in memory and writing them to Redis: a state dropped
  then and read back from Redis would lose them), so nothing is dropped on ``put``.
- :class:`PopularCache` keeps the top popular items, refreshed from Redis about every
  second, for cold users.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from recall.lsh import LSHIndex
from recall.userstate import UserState


@dataclass
class IndexSlot:
    """The index served now; replaced atomically by :meth:`swap`."""

    index: LSHIndex
    version: int
    #: the version's user-vector settings chosen offline (its metadata's ``user``)
    user: dict | None = None

    def swap(self, index: LSHIndex, version: int, user: dict | None = None) -> None:
        self.index, self.version, self.user = index, version, user

    def lookup(self, ids: list[str] | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``recall.users.Lookup``: current normalised vectors and a present mask."""
        return self.index.vectors_of(list(ids))


@dataclass
class UserCache:
    """user id -> state for the users of this worker's partitions, least recently used
    first (a dict keeps insertion order: a used entry is moved to the end), and user id
    -> partition beside it. Why two dicts, not an entry object per user: a dict of str
    keys and int values is not tracked by the cyclic GC, so the partitions cost its
    full collections nothing, where an entry object per user was one more object each
    collection walked (and ~60 bytes)."""

    entries: dict[str, UserState] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    #: most entries :meth:`trim` keeps (0 = no limit)
    limit: int = 0

    def get(self, user_id: str) -> UserState | None:
        state = self.entries.pop(user_id, None)
        if state is not None:
            self.entries[user_id] = state  # most recently used
        return state

    def put(self, user_id: str, state: UserState, partition: int) -> None:
        self.entries[user_id] = state
        self.partitions[user_id] = partition

    def missing(self, user_ids: Iterable[str]) -> list[str]:
        return [u for u in dict.fromkeys(user_ids) if u not in self.entries]

    def drop(self, user_ids: Iterable[str]) -> None:
        for u in user_ids:
            self.entries.pop(u, None)
            self.partitions.pop(u, None)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget users of revoked partitions; returns how many were dropped."""
        gone = set(partitions)
        if not gone:
            return 0
        drop = [u for u, p in self.partitions.items() if p in gone]
        self.drop(drop)
        return len(drop)

    def trim(self) -> int:
        """Drop the least recently used entries beyond ``limit``; returns how many."""
        over = len(self.entries) - self.limit if self.limit else 0
        if over <= 0:
            return 0
        self.drop(list(islice(self.entries, over)))
        return over

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.entries


@dataclass
class PopularCache:
    """Top popular (item_id, count) pairs, best first, with the time they were read."""

    items: list[tuple[str, float]] = field(default_factory=list)
    loaded_at: float = 0.0
    max_age: float = 1.0

    def stale(self, now: float | None = None) -> bool:
        return (now or time.monotonic()) - self.loaded_at > self.max_age

    def set(self, items: list[tuple[str, float]]) -> None:
        self.items = items
        self.loaded_at = time.monotonic()

    def top(self, k: int, exclude: set[str] | frozenset[str] = frozenset(),
            alive: LSHIndex | None = None) -> list[tuple[str, float]]:
        """The k most popular items not excluded (and still in ``alive`` when given)."""
        out: list[tuple[str, float]] = []
        for item_id, score in self.items:
            if item_id in exclude or (alive is not None and item_id not in alive):
                continue
            out.append((item_id, score))
            if len(out) >= k:
                break
        return out
