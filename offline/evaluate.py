"""Offline evaluation of next-click recall on a time split of a click log.

Protocol (documented in docs/offline.md):

- split at the ``1 - test_fraction`` quantile of ts: clicks before the cutoff train
  item2vec (and the tuner), clicks from the cutoff on are held out;
- a test user has clicks on both sides. Their embedding is the rolling vector of their
  last ``window`` training clicks (as the worker would hold it at the cutoff) and their
  recommendations exclude the items of that window (``exclude_seen``);
- targets are the held-out clicks on items not in that window: HitRate@k = share of
  users whose first such click is in the top k; Recall@k = mean share of their distinct
  such items that are in the top k;
- methods: ``lsh`` (LSHIndex.query, the worker's path), ``exact`` (brute-force cosine),
  ``popular`` (most clicked training items not in the window). Users without a usable
  embedding get the popular list from lsh and exact too, as from the worker;
- coverage = distinct items recommended to the test users / items clicked in training;
  ``lsh_recall_vs_exact`` = mean |LSH top-k ∩ exact top-k| / k over users with an
  embedding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from offline.clicklog import ClickLog, ClickLogError
from offline.userwin import user_windows, vector_rows

METHODS = ("lsh", "exact", "popular")


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10
    test_fraction: float = 0.1
    window: int = 50
    half_life: float = 0.0
    max_users: int = 10_000
    seed: int = 0


def time_split(clicks: ClickLog, test_fraction: float, name: str = "log",
               ) -> tuple[ClickLog, ClickLog, float]:
    """(train, test, cutoff): clicks before / from the ``1 - test_fraction`` ts quantile."""
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    cutoff = float(np.quantile(clicks.ts, 1.0 - test_fraction))
    before = clicks.ts < cutoff
    if not before.any() or before.all():
        raise ClickLogError(f"{name}: cannot split in time at ts={cutoff} (all clicks on "
                            "one side)")
    return clicks.take(before), clicks.take(~before), cutoff


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate(train: ClickLog, test: ClickLog, ids: list[str], vectors: np.ndarray,
             params: Any, cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run the protocol; ``train``/``test`` share vocabularies (from :func:`time_split`),
    ``vectors`` were trained on ``train`` only, ``params`` are LSHParams."""
    from tqdm import tqdm

    from recall.lsh import LSHIndex

    k, n_log_items = cfg.k, len(train.item_ids)
    rows = vector_rows(train, ids)  # log item code -> vector row
    # vector row -> log item code (ids absent from the log get codes past the log's)
    code_of_row = np.full(len(ids), -1, dtype=np.int64)
    known = rows >= 0
    code_of_row[rows[known]] = np.flatnonzero(known)
    extra = code_of_row < 0
    code_of_row[extra] = n_log_items + np.arange(int(extra.sum()))

    win = user_windows(train, ids, vectors, cfg.window, cfg.half_life, rows)
    candidates = np.intersect1d(win.users, np.unique(test.user))
    # targets: held-out clicks on items not in the user's window
    seen_key = win.clicks.user.astype(np.int64) * n_log_items + win.clicks.item
    t = test.take(np.isin(test.user, candidates))
    t_key = t.user.astype(np.int64) * n_log_items + t.item
    t = t.take(~np.isin(t_key, seen_key))
    users = np.unique(t.user)
    if len(users) == 0:
        raise ClickLogError("no user has held-out clicks on new items: nothing to evaluate")
    rng = np.random.default_rng(cfg.seed)
    if len(users) > cfg.max_users:
        users = np.sort(rng.choice(users, cfg.max_users, replace=False))
    m = len(users)
    t = t.take(np.isin(t.user, users))
    local = np.searchsorted(users, t.user)
    first = np.flatnonzero(np.diff(local, prepend=-1) != 0)  # t is sorted by (user, ts)
    next_item = t.item[first].astype(np.int64)
    target_key = np.unique(local.astype(np.int64) * n_log_items + t.item)
    n_targets = np.bincount(target_key // n_log_items, minlength=m)

    wi = np.searchsorted(win.users, users)  # rows of win.* for our users
    usable = win.usable[wi]
    seen_mask = np.isin(win.clicks.user, users)
    seen_local = np.searchsorted(users, win.clicks.user[seen_mask])
    seen_item = win.clicks.item[seen_mask]
    seen_sets: list[set[str]] = [set() for _ in range(m)]
    item_names = train.item_ids
    for u, i in zip(seen_local.tolist(), seen_item.tolist(), strict=True):
        seen_sets[u].add(item_names[i])

    preds = {name: np.full((m, k), -1, dtype=np.int64) for name in METHODS}

    # popular: most clicked training items, skipping the window's
    counts = np.bincount(train.item, minlength=n_log_items)
    top = np.argsort(-counts, kind="stable")[: k + cfg.window]
    top_names = [item_names[i] for i in top.tolist()]
    for u in range(m):
        chosen = [c for c, name in zip(top.tolist(), top_names, strict=True)
                  if name not in seen_sets[u]][:k]
        preds["popular"][u, : len(chosen)] = chosen
    preds["lsh"][~usable] = preds["popular"][~usable]
    preds["exact"][~usable] = preds["popular"][~usable]

    uq = win.vectors[wi[usable]]
    uq = uq / np.linalg.norm(uq, axis=1, keepdims=True)
    uidx = np.flatnonzero(usable)

    # exact: batched matrix products, the window's items masked out
    seen_row = rows[seen_item]
    pos_of_local = np.full(m, -1, dtype=np.int64)
    pos_of_local[uidx] = np.arange(len(uidx))
    batch = 1024
    for start in tqdm(range(0, len(uidx), batch), desc="exact", unit="batch",
                      disable=not progress):
        scores = uq[start:start + batch] @ vectors.T
        sel = (pos_of_local[seen_local] >= start) & (pos_of_local[seen_local] < start + batch)
        sel &= seen_row >= 0
        scores[pos_of_local[seen_local[sel]] - start, seen_row[sel]] = -np.inf
        best = _topk(scores, k)
        got = code_of_row[best]
        got[~np.isfinite(np.take_along_axis(scores, best, axis=1))] = -1
        preds["exact"][uidx[start:start + batch], : got.shape[1]] = got

    # lsh: one query per user, the worker's path
    index = LSHIndex(params)
    index.add(ids, vectors)
    row_of_id = {item_id: r for r, item_id in enumerate(ids)}
    n_cand = np.zeros(len(uidx), dtype=np.int64)
    t0 = time.perf_counter()
    for j, u in enumerate(tqdm(uidx.tolist(), desc="lsh", unit="user", disable=not progress)):
        res = index.query(uq[j], k, exclude=seen_sets[u])
        n_cand[j] = res.candidates
        got = [code_of_row[row_of_id[i]] for i in res.ids]
        preds["lsh"][u, : len(got)] = got
    lsh_seconds = time.perf_counter() - t0

    catalogue = int(np.count_nonzero(counts))
    out: dict[str, Any] = {
        "k": k, "train_clicks": len(train), "test_clicks": len(test),
        "users_evaluated": m, "users_without_vector": int((~usable).sum()),
        "catalogue_items": catalogue, "items_with_vectors": len(ids), "methods": {},
    }
    for name, p in preds.items():
        hit_at = np.cumsum(p == next_item[:, None], axis=1).clip(max=1)  # (m, k)
        key = np.arange(m, dtype=np.int64)[:, None] * n_log_items + p
        inside = np.isin(key, target_key) & (p >= 0) & (p < n_log_items)
        recall = inside.sum(axis=1) / np.maximum(n_targets, 1)
        out["methods"][name] = {
            "hit_rate": float(hit_at[:, -1].mean()),
            "recall": float(recall.mean()),
            "coverage": float(len(np.unique(p[p >= 0])) / catalogue),
            "hit_rate_at": hit_at.mean(axis=0).round(5).tolist(),
        }
    if len(uidx):
        a, b = preds["lsh"][uidx], preds["exact"][uidx]
        overlap = np.array([len(set(x.tolist()) & set(y[y >= 0].tolist()))
                            for x, y in zip(a, b, strict=True)])
        denom = np.maximum((b >= 0).sum(axis=1), 1)
        out["lsh_recall_vs_exact"] = float((overlap / denom).mean())
        out["lsh_candidates_mean"] = float(n_cand.mean())
        out["lsh_ms_per_query"] = 1000 * lsh_seconds / len(uidx)
    return out


def format_table(res: dict[str, Any]) -> str:
    k = res["k"]
    lines = [f"{'method':<8} {f'HitRate@{k}':>11} {f'Recall@{k}':>10} {'coverage':>9}"]
    for name in METHODS:
        r = res["methods"][name]
        lines.append(f"{name:<8} {r['hit_rate']:>11.4f} {r['recall']:>10.4f} "
                     f"{r['coverage']:>9.4f}")
    lines.append(f"users evaluated: {res['users_evaluated']} "
                 f"({res['users_without_vector']} without an embedding got popular items)")
    if "lsh_recall_vs_exact" in res:
        lines.append(f"LSH recall@{k} vs exact: {res['lsh_recall_vs_exact']:.4f} "
                     f"(mean {res['lsh_candidates_mean']:.0f} candidates, "
                     f"{res['lsh_ms_per_query']:.2f} ms/query)")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> None:
    """HitRate@j for j = 1..k per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(1, res["k"] + 1)
    for name in METHODS:
        ax.plot(ks, res["methods"][name]["hit_rate_at"], marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("HitRate@k (next new click)")
    ax.set_title(f"next-click HitRate, {res['users_evaluated']} users")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
