"""A new hash layout as a new index version in Redis: the live version's items copied and
re-hashed (the recall watch's re-picks, :mod:`stream.watch`)."""

from __future__ import annotations

import asyncio
import contextlib

from recall.lsh import Hasher, LSHParams
from recall.store import Store

#: items read and written per round trip when copying a version to a new layout. Each
#: batch's HSCAN reply, ids, vectors, keys and HSET commands are held at once, and 20,000
#: held them past the worker's trims: a copy of 1M x 64 peaked at +91-94 MB over the RSS
#: before it (``python -m devtools.bench_copy``, in 5.1-6.6 s), +10-12 MB with 2,000
#: (5.3-6.4 s), +5.7 MB with 1,000 (6.9 s). It set the worker's peak in a live cost move
#: at 1M (628.3 MB, during the copy; the move after it stayed below)
COPY_BATCH = 2_000


async def copy_version(store: Store, version: int, params: LSHParams, dim: int,
                       positions: dict[int, int]) -> int:
    """A new (not live) version with ``version``'s items hashed with ``params``, complete
    up to the offsets recorded for ``version`` (read first; ``positions`` stand in for
    partitions it has none for). Returns the new version."""
    offsets = {**positions, **await store.item_offsets(version)}
    hasher = Hasher(params)
    # marked as a re-layout of ``version``: a worker serving it re-hashes its own items
    # (ItemsFollower.rebuild) instead of reading this copy back; the same vectors, so the
    # same user-vector settings
    user = (await store.get_meta(version) or {}).get("user")
    new = await store.create_version(params.to_dict(), dim, user=user, relayout_of=version)
    try:
        async for ids, vectors in store.iter_items(version, COPY_BATCH, dim=dim):
            keys = await asyncio.to_thread(hasher.keys, vectors)
            await store.upsert_items(new, ids, vectors, keys)
        await store.set_item_offsets(new, offsets)
    except BaseException:
        with contextlib.suppress(Exception):
            await store.delete_version(new)
        raise
    return new
