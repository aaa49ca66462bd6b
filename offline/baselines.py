"""Strong simple recommenders the embedding recall has to beat, from training clicks only.

All return a (users, k) matrix of log item codes, best first, -1 where fewer than k items
were found, and never recommend an item of the user's *seen* set (the same exclusion the
embedding methods get):

- ``popular``: the most clicked training items;
- ``recent-popular``: the most clicked training items of the ``days`` days before the
  user's query time (whole days, so no click of the query day itself is counted),
  ties and empty windows filled by overall popularity;
- ``cooc``: item-to-item co-occurrence. Two training clicks of one user at most
  ``window`` positions apart co-occur; a user's score for an item is the sum of its
  co-occurrence counts with the user's ``recent`` last training clicks (one sparse
  product), ties and users with no co-clicked item filled by overall popularity.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from offline.clicklog import ClickLog


def first_unseen(cands: np.ndarray, seen_key: np.ndarray, n_codes: int, k: int
                 ) -> np.ndarray:
    """Per row of ``cands`` (m, c) (codes, -1 none), the first ``k`` not in the row's
    seen set (``seen_key`` = sorted ``row * n_codes + item``)."""
    m = cands.shape[0]
    key = np.arange(m, dtype=np.int64)[:, None] * n_codes + cands
    ok = (cands >= 0) & ~np.isin(key, seen_key)
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(cands, order, axis=1)
    out[~np.take_along_axis(ok, order, axis=1)] = -1
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def _ranked(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best ``scores`` (1-D), best first, zero scores left out."""
    n = min(n, int(np.count_nonzero(scores > 0)))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, n - 1)[:n]
    return part[np.argsort(-scores[part], kind="stable")]


def tiebreak(train: ClickLog, n_codes: int) -> np.ndarray:
    """Overall click counts scaled into [0, 1): added to a score, they break its ties by
    popularity without reordering different integer scores."""
    counts = np.bincount(train.item, minlength=n_codes).astype(np.float64)
    return counts / (counts.max() + 1.0)


def popular(train: ClickLog, m: int, seen_key: np.ndarray, n_codes: int, k: int,
            max_seen: int) -> np.ndarray:
    counts = np.bincount(train.item, minlength=n_codes)
    top = _ranked(counts.astype(np.float64), k + max_seen)
    return first_unseen(np.broadcast_to(top, (m, len(top))), seen_key, n_codes, k)


def recent_popular(train: ClickLog, query_ts: np.ndarray, seen_key: np.ndarray,
                   n_codes: int, k: int, max_seen: int, days: float) -> np.ndarray:
    """``query_ts`` (m,): each user's query time; the window is the ``days`` whole days
    (UTC) before the day of the query."""
    day = 86400.0
    order = np.argsort(train.ts, kind="stable")
    ts, item = train.ts[order], train.item[order]
    end_day = np.floor(query_ts / day)
    ends, inverse = np.unique(end_day, return_inverse=True)
    base = tiebreak(train, n_codes)
    width = k + max_seen
    lists = np.full((len(ends), width), -1, dtype=np.int64)
    for j, e in enumerate(ends.tolist()):
        lo, hi = np.searchsorted(ts, [(e - days) * day, e * day], side="left")
        score = np.bincount(item[lo:hi], minlength=n_codes) + base
        top = _ranked(score, width)
        lists[j, : len(top)] = top
    return first_unseen(lists[inverse], seen_key, n_codes, k)


def cooc_matrix(train: ClickLog, n_codes: int, window: int) -> sparse.csr_matrix:
    """Symmetric item x item counts of a user's clicks at most ``window`` apart
    (``train`` sorted by user, ts); the diagonal (an item with itself) is dropped."""
    rows, cols = [], []
    for off in range(1, window + 1):
        same = train.user[off:] == train.user[:-off]
        a, b = train.item[:-off][same], train.item[off:][same]
        diff = a != b
        rows += [a[diff], b[diff]]
        cols += [b[diff], a[diff]]
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int32)
    mat = sparse.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)),
                            shape=(n_codes, n_codes))
    mat.sum_duplicates()
    return mat


def cooc(train: ClickLog, users: np.ndarray, seen_key: np.ndarray, n_codes: int, k: int,
         window: int, recent: int, batch: int = 1024) -> np.ndarray:
    """``users`` (m,) log user codes, ascending; see the module docstring."""
    from offline.userwin import window_mask

    mat = cooc_matrix(train, n_codes, window)
    last = train.take(window_mask(train, recent) & np.isin(train.user, users))
    local = np.searchsorted(users, last.user)
    m = len(users)
    hist = sparse.csr_matrix((np.ones(len(last), dtype=np.float32), (local, last.item)),
                             shape=(m, n_codes))
    scores = (hist @ mat).tocsr()
    base = tiebreak(train, n_codes)
    seen_rows = seen_key // n_codes
    seen_cols = seen_key % n_codes
    out = np.full((m, k), -1, dtype=np.int64)
    for s in range(0, m, batch):
        dense = scores[s:s + batch].toarray().astype(np.float64) + base
        sel = (seen_rows >= s) & (seen_rows < s + batch)
        dense[seen_rows[sel] - s, seen_cols[sel]] = -np.inf
        kk = min(k, n_codes)
        part = np.argpartition(-dense, kk - 1, axis=1)[:, :kk]
        best = np.take_along_axis(
            part, np.argsort(-np.take_along_axis(dense, part, axis=1), axis=1,
                             kind="stable"), axis=1)
        best[~np.isfinite(np.take_along_axis(dense, best, axis=1))] = -1
        out[s:s + batch, :kk] = best
    return out
