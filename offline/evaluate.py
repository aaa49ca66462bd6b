"""Offline evaluation of next-click recall: protocols, methods, metrics with intervals.

Protocols (documented in docs/offline.md), both returning ``(train, test)`` with shared
vocabularies:

- :func:`split_last` (``--protocol last``, the usual one in the literature): each user's
  last ``holdout`` clicks are held out; every user with more clicks than that is
  evaluated;
- :func:`time_split` (``--protocol time``): clicks from the ``1 - test_fraction`` ts
  quantile on are held out; users with clicks on both sides are evaluated.

:func:`evaluate` scores methods on such a split. Nothing in it reads the *items* of the
held-out clicks except to score (a test poisons them and checks the answers).

- a user's *seen* set is the items of their last ``seen`` training clicks: recommendations
  of every method leave them out (the worker's ``exclude_seen``), and targets are the
  held-out clicks on other items. ``seen`` does not follow the user-vector window, so
  configurations with different windows are scored on the same targets;
- the user vector is the (decayed) mean of their last ``window`` training clicks
  (``half_life``; the worker's rolling vector, :mod:`offline.userwin`); with
  ``interests`` = M > 1, up to M interest vectors (one per recent session, cut at gaps
  > ``session_gap``), each searched and the results merged by best score (exact: the
  max over interests of each item's cosine; lsh: :func:`recall.interests.merge_by_score`
  of one query per interest, as the worker does);
- methods: ``lsh`` (LSHIndex.search, the worker's path), ``exact`` (brute-force cosine),
  and the baselines of :mod:`offline.baselines` (``popular``, ``recent-popular``,
  ``cooc``). Users without a usable vector get the popular list from lsh and exact, as
  from the worker;
- metrics of :mod:`offline.metrics` with 95% bootstrap intervals over users, the lift
  of each method's HitRate over ``popular`` (paired interval), coverage = distinct items
  recommended / items clicked in training, ``lsh_recall_vs_exact`` = mean |LSH top-k ∩
  exact top-k| / |exact top-k| over users with a vector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from offline import baselines, metrics
from offline.clicklog import ClickLog, ClickLogError
from offline.userwin import user_windows, vector_rows, window_mask

#: every method, in table order
METHODS = ("lsh", "exact", "popular", "recent-popular", "cooc")
#: methods that need no item vectors
BASELINES = ("popular", "recent-popular", "cooc")
PROTOCOLS = ("last", "time")
#: below this many evaluated users the table warns that figures are noisy
SMALL_TEST = 1000


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10
    window: int = 50  # user vector: mean of the last `window` training clicks (>= 1)
    half_life: float = 0.0  # user vector: time decay, seconds (0: none)
    seen: int = 50  # items of the last `seen` training clicks: excluded, not targets
    max_users: int = 10_000
    seed: int = 0
    bootstrap: int = 1000  # resamples for the intervals (0: no intervals)
    recent_days: float = 7.0  # recent-popular: whole days before the query day
    cooc_window: int = 5  # cooc: clicks at most this many positions apart co-occur
    cooc_recent: int = 5  # cooc: the user's last clicks whose co-clicks are summed
    test_fraction: float = 0.1  # time protocol only (kept for callers of time_split)
    interests: int = 1  # user vectors: up to M interest vectors, one per recent session
    session_gap: float = 1800.0  # seconds between clicks that start a new session


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


def split_last(clicks: ClickLog, holdout: int = 1, name: str = "log",
               ) -> tuple[ClickLog, ClickLog]:
    """(train, test): each user's last ``holdout`` clicks (by ts; ties in log order) are
    held out, for every user with more than ``holdout`` clicks; users with fewer stay
    whole in train. ``clicks`` sorted by (user, ts), as :func:`read_log` gives them.
    Applied to a training split it carves a validation split from training clicks only."""
    if holdout < 1:
        raise ValueError("holdout must be >= 1")
    bounds = clicks.user_bounds()
    sizes = np.diff(bounds)
    ends = np.repeat(bounds[1:], sizes)
    from_end = ends - np.arange(len(clicks))  # 1 for a user's last click
    held = (from_end <= holdout) & (np.repeat(sizes, sizes) > holdout)
    if not held.any():
        raise ClickLogError(f"{name}: no user has more than {holdout} click(s): nothing to "
                            "hold out")
    return clicks.take(~held), clicks.take(held)


@dataclass
class _Setup:
    """What every method shares: the evaluated users, their seen sets and targets."""

    users: np.ndarray  # (m,) log user codes, ascending
    seen_key: np.ndarray  # sorted user-row * n_codes + item of each user's seen items
    max_seen: int
    next_item: np.ndarray  # (m,) code of each user's next target click
    target_key: np.ndarray  # sorted user-row * n_codes + item of their target items
    n_targets: np.ndarray  # (m,)
    query_ts: np.ndarray  # (m,) ts of the user's last training click
    n_codes: int


def _setup(train: ClickLog, test: ClickLog, cfg: EvalConfig, n_codes: int) -> _Setup:
    seen = train.take(window_mask(train, cfg.seen))
    last_ts = seen.ts[seen.user_bounds()[1:] - 1]
    seen_users = seen.user[seen.user_bounds()[:-1]]
    t = test.take(np.isin(test.user, seen_users))
    seen_glob = seen.user.astype(np.int64) * n_codes + seen.item
    t = t.take(~np.isin(t.user.astype(np.int64) * n_codes + t.item, seen_glob))
    users = np.unique(t.user)
    if len(users) == 0:
        raise ClickLogError("no user has held-out clicks on items they had not just seen: "
                            "nothing to evaluate")
    if len(users) > cfg.max_users:
        rng = np.random.default_rng(cfg.seed)
        users = np.sort(rng.choice(users, cfg.max_users, replace=False))
    t = t.take(np.isin(t.user, users))
    local = np.searchsorted(users, t.user)
    first = np.flatnonzero(np.diff(local, prepend=-1) != 0)  # t sorted by (user, ts)
    target_key = np.unique(local.astype(np.int64) * n_codes + t.item)
    s = seen.take(np.isin(seen.user, users))
    seen_key = np.unique(np.searchsorted(users, s.user).astype(np.int64) * n_codes + s.item)
    return _Setup(
        users=users, seen_key=seen_key, max_seen=cfg.seen,
        next_item=t.item[first].astype(np.int64), target_key=target_key,
        n_targets=np.bincount(target_key // n_codes, minlength=len(users)),
        query_ts=last_ts[np.searchsorted(seen_users, users)], n_codes=n_codes)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _scores(uq: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine of each user to each item: ``uq`` (n, D), or (n, M, D) interests with zero
    rows where unusable: each item's best score over the user's usable interests."""
    if uq.ndim == 2:
        return uq @ vectors.T
    out = np.full((len(uq), len(vectors)), -np.inf, dtype=np.float32)
    for j in range(uq.shape[1]):  # M is small: one product per interest
        sj = uq[:, j] @ vectors.T
        sj[~uq[:, j].any(axis=1)] = -np.inf
        np.maximum(out, sj, out=out)
    return out


def _exact(uq: np.ndarray, uidx: np.ndarray, vectors: np.ndarray, code_of_row: np.ndarray,
           row_of_code: np.ndarray, st: _Setup, k: int, progress: bool) -> np.ndarray:
    """Brute-force cosine top-k of the users ``uidx`` (rows of st.users), seen masked;
    ``uq`` as :func:`_scores` takes it."""
    from tqdm import tqdm

    out = np.full((len(uidx), k), -1, dtype=np.int64)
    seen_u, seen_i = st.seen_key // st.n_codes, st.seen_key % st.n_codes
    seen_r = row_of_code[seen_i]
    pos = np.full(len(st.users), -1, dtype=np.int64)
    pos[uidx] = np.arange(len(uidx))
    seen_p = pos[seen_u]
    keep = (seen_r >= 0) & (seen_p >= 0)
    seen_p, seen_r = seen_p[keep], seen_r[keep]
    batch = 1024
    for s in tqdm(range(0, len(uidx), batch), desc="exact", unit="batch",
                  disable=not progress):
        scores = _scores(uq[s:s + batch], vectors)
        sel = (seen_p >= s) & (seen_p < s + batch)
        scores[seen_p[sel] - s, seen_r[sel]] = -np.inf
        best = _topk(scores, k)
        got = code_of_row[best]
        got[~np.isfinite(np.take_along_axis(scores, best, axis=1))] = -1
        out[s:s + batch, : got.shape[1]] = got
    return out


def _lsh(uq: np.ndarray, uidx: np.ndarray, ids: list[str], vectors: np.ndarray,
         code_of_row: np.ndarray, names: list[str], st: _Setup, params: Any, k: int,
         progress: bool) -> tuple[np.ndarray, dict[str, float]]:
    """One LSHIndex.search per user (the worker's path), the seen items excluded; with
    interests (``uq`` (n, M, D)), one query per usable interest, merged by best score."""
    from tqdm import tqdm

    from recall.interests import merge_by_score
    from recall.lsh import LSHIndex

    index = LSHIndex(params)
    index.add(ids, vectors)
    seen_sets: list[set[str]] = [set() for _ in range(len(st.users))]
    for u, i in zip((st.seen_key // st.n_codes).tolist(),
                    (st.seen_key % st.n_codes).tolist(), strict=True):
        if i < len(names):
            seen_sets[u].add(names[i])
    row_of_id = {item_id: r for r, item_id in enumerate(ids)}
    out = np.full((len(uidx), k), -1, dtype=np.int64)
    n_cand = np.zeros(len(uidx), dtype=np.int64)
    t0 = time.perf_counter()
    for j, u in enumerate(tqdm(uidx.tolist(), desc="lsh", unit="user", disable=not progress)):
        if uq.ndim == 2:
            res = index.search(uq[j], k, [seen_sets[u]])[0]
            n_cand[j], found = res.candidates, res.ids
        else:
            qs = uq[j][uq[j].any(axis=1)]
            parts = index.search(qs, k, [seen_sets[u]] * len(qs))
            n_cand[j] = sum(r.candidates for r in parts)
            found, _ = merge_by_score([r.ids for r in parts], [r.scores for r in parts], k)
        got = [code_of_row[row_of_id[i]] for i in found]
        out[j, : len(got)] = got
    seconds = time.perf_counter() - t0
    return out, {"lsh_candidates_mean": float(n_cand.mean()) if len(uidx) else 0.0,
                 "lsh_ms_per_query": 1000 * seconds / max(len(uidx), 1)}


def evaluate(train: ClickLog, test: ClickLog, ids: list[str] | None = None,
             vectors: np.ndarray | None = None, config: EvalConfig | None = None,
             methods: tuple[str, ...] = METHODS, *, params: Any = None,
             now: float | None = None, progress: bool = False,
             details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``methods`` on a split (``train``/``test`` from :func:`split_last` or
    :func:`time_split`). ``ids``/``vectors`` (L2-normalised rows) must come from
    ``train`` only; ``params`` (LSHParams) are needed for ``lsh``; ``now`` fixes every
    user's query time for recent-popular (the cutoff of a time split; default: the
    user's last training click). Returns ``methods[name]["hit_rate"]`` etc.

    Fast enough to call per search trial: everything but ``lsh`` is a few batched
    numpy/scipy products; ``config.bootstrap=0`` skips the intervals. A ``details`` dict
    receives the answers for the plots (``predictions`` per method as log item codes,
    ``users``, ``next_item``, ``row_of_code`` = vector row of each code, -1 none)."""
    cfg = config or EvalConfig()
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; expected some of {METHODS}")
    embed = [m for m in methods if m in ("lsh", "exact")]
    if embed and (ids is None or vectors is None):
        raise ValueError(f"{embed} need item vectors")
    if "lsh" in methods and params is None:
        raise ValueError("lsh needs LSH parameters")
    if cfg.window < 1 or cfg.seen < 1 or cfg.k < 1 or cfg.interests < 1:
        raise ValueError("need window >= 1, seen >= 1, k >= 1, interests >= 1")
    k, names = cfg.k, train.item_ids
    n_log = len(names)
    ids = ids or []
    # log item code <-> vector row; ids absent from the log get codes past the log's
    rows = vector_rows(train, ids)
    code_of_row = np.full(len(ids), -1, dtype=np.int64)
    code_of_row[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
    extra = code_of_row < 0
    code_of_row[extra] = n_log + np.arange(int(extra.sum()))
    n_codes = n_log + int(extra.sum())
    row_of_code = np.full(n_codes, -1, dtype=np.int64)
    row_of_code[code_of_row] = np.arange(len(ids))

    st = _setup(train, test, cfg, n_codes)
    m = len(st.users)
    preds: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pop = baselines.popular(train, m, st.seen_key, n_codes, k, st.max_seen)
    timings["popular"] = time.perf_counter() - t0
    if "popular" in methods:
        preds["popular"] = pop
    if "recent-popular" in methods:
        t0 = time.perf_counter()
        q_ts = st.query_ts if now is None else np.full(m, now)
        preds["recent-popular"] = baselines.recent_popular(
            train, q_ts, st.seen_key, n_codes, k, st.max_seen, cfg.recent_days)
        timings["recent-popular"] = time.perf_counter() - t0
    if "cooc" in methods:
        t0 = time.perf_counter()
        preds["cooc"] = baselines.cooc(train, st.users, st.seen_key, n_codes, k,
                                       cfg.cooc_window, cfg.cooc_recent)
        timings["cooc"] = time.perf_counter() - t0

    out: dict[str, Any] = {
        "k": k, "train_clicks": len(train), "test_clicks": len(test),
        "users_evaluated": m, "catalogue_items": int(np.count_nonzero(
            np.bincount(train.item, minlength=n_log))),
        "items_with_vectors": len(ids), "window": cfg.window, "half_life": cfg.half_life,
        "interests": cfg.interests, "session_gap": cfg.session_gap,
        "seen": cfg.seen, "methods": {},
    }
    if embed:
        assert vectors is not None
        win = user_windows(train, ids, vectors, cfg.window, cfg.half_life, rows,
                           interests=cfg.interests, session_gap=cfg.session_gap)
        wi = np.searchsorted(win.users, st.users)
        wi_ok = (wi < len(win.users)) & (win.users[np.minimum(wi, len(win.users) - 1)]
                                         == st.users)
        usable = wi_ok & win.usable[np.minimum(wi, len(win.users) - 1)]
        if cfg.interests > 1:  # (n, M, D), unit rows; zero rows where unusable
            assert win.interests is not None and win.interest_ok is not None
            iq = win.interests[np.minimum(wi, len(win.users) - 1)].astype(np.float32)
            norms = np.linalg.norm(iq, axis=2, keepdims=True)
            ok = win.interest_ok[np.minimum(wi, len(win.users) - 1)] & (norms[..., 0] > 0)
            iq = np.where(ok[..., None], iq / np.where(norms > 0, norms, 1.0), 0.0)
            usable &= ok.any(axis=1)
            uidx = np.flatnonzero(usable)
            uq = iq[uidx].astype(np.float32)
        else:
            uidx = np.flatnonzero(usable)
            uq = win.vectors[wi[uidx]]
            uq = uq / np.linalg.norm(uq, axis=1, keepdims=True)
        out["users_without_vector"] = int(m - len(uidx))
        for name in embed:
            t0 = time.perf_counter()
            p = pop.copy()
            if name == "exact":
                p[uidx] = _exact(uq, uidx, vectors, code_of_row, row_of_code, st, k,
                                 progress)
            else:
                p[uidx], figs = _lsh(uq, uidx, ids, vectors, code_of_row, names, st,
                                     params, k, progress)
                out.update(figs)
            preds[name] = p
            timings[name] = time.perf_counter() - t0
        if "lsh" in preds and "exact" in preds and len(uidx):
            a, b = preds["lsh"][uidx], preds["exact"][uidx]
            both = (a[:, :, None] == b[:, None, :]) & (b[:, None, :] >= 0)
            overlap = both.any(axis=2).sum(axis=1)
            out["lsh_recall_vs_exact"] = float(
                (overlap / np.maximum((b >= 0).sum(axis=1), 1)).mean())

    boot = metrics.Bootstrap.draw(m, cfg.bootstrap, cfg.seed + 1)
    per = {name: metrics.per_user(p, st.next_item, st.target_key, st.n_targets, n_codes)
           for name, p in preds.items()}
    pop_hits = metrics.per_user(pop, st.next_item, st.target_key, st.n_targets,
                                n_codes)["hit_rate"]
    pop_mean, pop_boot = pop_hits.mean(), boot.means(pop_hits)
    catalogue = out["catalogue_items"]
    for name in METHODS:
        if name not in preds:
            continue
        v, p = per[name], preds[name]
        r: dict[str, Any] = {}
        for metric in metrics.METRICS:
            r[metric] = float(v[metric].mean())
            r[f"{metric}_ci"] = metrics.interval(boot.means(v[metric]))
        r["coverage"] = float(len(np.unique(p[p >= 0])) / max(catalogue, 1))
        r["coverage_ci"] = (metrics.centred_interval(boot.coverage(p, catalogue),
                                                     r["coverage"]) if boot.b else None)
        r["hit_rate_at"] = v["hit_at"].mean(axis=0).round(5).tolist()
        if boot.b:
            at = boot.means(v["hit_at"])
            r["hit_rate_at_ci"] = np.percentile(at, [2.5, 97.5], axis=0).T.round(5).tolist()
        r["lift"] = float(r["hit_rate"] / pop_mean) if pop_mean > 0 else None
        r["lift_ci"] = metrics.interval(metrics.ratio_samples(boot.means(v["hit_rate"]),
                                                              pop_boot))
        r["seconds"] = round(timings.get(name, 0.0), 4)
        out["methods"][name] = r
    out["small_test"] = m < SMALL_TEST
    if details is not None:
        details.update(predictions=preds, users=st.users, next_item=st.next_item,
                       row_of_code=row_of_code)
    return out


def format_table(res: dict[str, Any]) -> str:
    """The human table: each figure with its 95% interval, and a warning for small tests."""
    k = res["k"]
    cols = [("hit_rate", f"HitRate@{k}"), ("recall", f"Recall@{k}"), ("ndcg", f"NDCG@{k}"),
            ("mrr", f"MRR@{k}"), ("coverage", "coverage"), ("lift", "lift vs popular")]

    def cell(r: dict[str, Any], key: str) -> str:
        v, ci = r.get(key), r.get(f"{key}_ci")
        if v is None:
            return "-"
        return f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

    rows = [["method"] + [c[1] for c in cols]]
    for name in METHODS:
        if name in res["methods"]:
            rows.append([name] + [cell(res["methods"][name], key) for key, _ in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    extra = (f" ({res['users_without_vector']} without an embedding got popular items)"
             if "users_without_vector" in res else "")
    lines.append(f"users evaluated: {res['users_evaluated']}{extra}; [95% bootstrap "
                 "interval over users]")
    if res.get("small_test"):
        lines.append(f"NOTE: fewer than {SMALL_TEST} users evaluated: the test set is small "
                     "and the figures noisy; only differences outside the intervals mean "
                     "much")
    if "lsh_recall_vs_exact" in res:
        lines.append(f"LSH recall@{k} vs exact: {res['lsh_recall_vs_exact']:.4f} "
                     f"(mean {res['lsh_candidates_mean']:.0f} candidates, "
                     f"{res['lsh_ms_per_query']:.2f} ms/query)")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> None:
    """HitRate@j for j = 1..k per method, with 95% intervals, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks = np.arange(1, res["k"] + 1)
    for name in METHODS:
        r = res["methods"].get(name)
        if r is None:
            continue
        line, = ax.plot(ks, r["hit_rate_at"], marker="o", ms=3, label=name)
        if r.get("hit_rate_at_ci"):
            ci = np.asarray(r["hit_rate_at_ci"])
            ax.fill_between(ks, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("k")
    ax.set_ylabel("HitRate@k (next new click)")
    ax.set_title(f"next-click HitRate, {res['users_evaluated']} users (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
