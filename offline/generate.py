"""Synthetic click logs with the structure of real traffic, and matching item vectors.

The model (all numpy-vectorised, seeded):

- items fall into ``clusters`` latent interests (default: one per 50 items); within a
  cluster, item popularity is Zipf (``zipf_a``), and clusters themselves are mildly
  skewed (``cluster_a``);
- each user has 1-4 interests drawn by cluster popularity, and a heavy-tailed
  (log-normal) number of clicks, at least one;
- a user's clicks come in sessions (mean ``session_clicks`` clicks) that stay on one of
  the user's interests (interest j chosen with weight ``primary**j``: the first one
  dominates); sessions start at uniform times over ``span`` seconds (so gaps between a
  user's sessions are hours to days), clicks within one are 1 + Exp(``click_gap``) s apart;
- a fraction ``noise`` of clicks go to a random popular item of any cluster;
- a fraction ``popular_share`` of clicks, whatever the user's interests, go to an item
  drawn from one global Zipf over all items (exponent ``popular_zipf``): the hits,
  trending and front-page items everyone clicks. This is the global popularity skew and
  long tail of real logs, which makes most-popular a real baseline (HitRate@10 about
  0.05-0.10 under leave-last-one-out at the defaults); ``popular_share=0`` gives the
  older, interest-only logs. The hits drift: every ``trend_days`` days each item's
  weight gets fresh log-normal noise (``trend``), so recent popularity is worth more than
  all-time popularity, as in real traffic.

:func:`generate_clicks` returns the log plus the ground truth (each item's cluster);
:func:`cluster_vectors` makes item vectors from that ground truth (for demos that skip
training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.clicklog import ClickLog

#: 2026-10-01T00:00:00Z: generated logs start here
START_TS = 1790812800.0


@dataclass
class GeneratedLog:
    log: ClickLog  # sorted by user, then ts
    item_cluster: np.ndarray  # (n_items,) int32: the latent interest of each item
    user_interests: np.ndarray  # (n_users, 4) int32; only the first n_interests count
    n_interests: np.ndarray  # (n_users,) int8, 1..4
    clusters: int
    popular: np.ndarray  # (n_clicks,) bool, rows of `log`: a global-popularity click


def _zipf_sampler(item_cluster: np.ndarray, clusters: int, a: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster Zipf over a random ranking of each cluster's items, as one flat table:
    cluster c's cumulative probabilities are shifted to (c, c+1], so a click on cluster c
    with uniform u picks ``items[searchsorted(cum, c + u)]``."""
    ranking = rng.permutation(len(item_cluster))
    items = ranking[np.argsort(item_cluster[ranking], kind="stable")]  # grouped by cluster
    counts = np.bincount(item_cluster, minlength=clusters)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(items)) - np.repeat(starts, counts)
    p = (rank + 1.0) ** -a
    cum = np.cumsum(p)
    base = np.repeat(cum[starts] - p[starts], counts)
    total = np.repeat(np.add.reduceat(p, starts), counts)
    shifted = (cum - base) / total + np.repeat(np.arange(clusters), counts)
    return items, shifted


def _global_hits(t: np.ndarray, n_items: int, zipf_a: float, trend: float,
                 trend_days: float, rng: np.random.Generator) -> np.ndarray:
    """Items of global-popularity clicks at times ``t`` (seconds from the start): a Zipf
    over all items whose log-weights get fresh N(0, ``trend``) noise every ``trend_days``
    days, so the hits of one week are partly not those of the next."""
    base = -zipf_a * np.log(np.arange(n_items) + 1.0)[rng.permutation(n_items)]
    period = np.floor(t / (trend_days * 86400.0)).astype(np.int64)
    out = np.empty(len(t), dtype=np.int64)
    for p in np.unique(period).tolist():
        logw = base + trend * rng.standard_normal(n_items) if trend > 0 else base
        cum = np.cumsum(np.exp(logw - logw.max()))
        at = period == p
        drawn = np.searchsorted(cum, rng.random(int(at.sum())) * cum[-1], side="right")
        out[at] = np.minimum(drawn, n_items - 1)
    return out


def generate_clicks(n_users: int, n_items: int, n_clicks: int, seed: int = 0, *,
                    clusters: int | None = None, zipf_a: float = 1.1,
                    cluster_a: float = 0.5, session_clicks: float = 8.0,
                    click_gap: float = 45.0, primary: float = 0.5,
                    noise: float = 0.05, popular_share: float = 0.25,
                    popular_zipf: float = 1.0, trend: float = 1.0,
                    trend_days: float = 7.0, span: float = 28 * 86400.0,
                    event_ids: bool = True) -> GeneratedLog:
    """A synthetic click log; see the module docstring for the model."""
    if n_users < 1 or n_items < 1:
        raise ValueError("need at least one user and one item")
    if n_clicks < n_users:
        raise ValueError(f"clicks ({n_clicks}) must be >= users ({n_users})")
    clusters = clusters or max(2, min(n_items, round(n_items / 50)))
    if not 1 <= clusters <= n_items:
        raise ValueError(f"clusters must be in 1..items ({n_items}), got {clusters}")
    if not 0 <= noise <= 1 or session_clicks < 1:
        raise ValueError("noise must be in [0, 1] and session_clicks >= 1")
    if not 0 <= popular_share <= 1 or popular_zipf < 0:
        raise ValueError("popular_share must be in [0, 1] and popular_zipf >= 0")
    if trend < 0 or trend_days <= 0:
        raise ValueError("trend must be >= 0 and trend_days > 0")
    rng = np.random.default_rng(seed)

    item_cluster = rng.permutation(np.arange(n_items) % clusters).astype(np.int32)
    p_cluster = (np.arange(clusters) + 1.0) ** -cluster_a
    p_cluster /= p_cluster.sum()
    zipf_items, zipf_cum = _zipf_sampler(item_cluster, clusters, zipf_a, rng)

    def pick(cluster_of_click: np.ndarray) -> np.ndarray:
        u = rng.random(len(cluster_of_click))
        idx = np.searchsorted(zipf_cum, cluster_of_click + u, side="left")
        return zipf_items[np.minimum(idx, len(zipf_items) - 1)]

    interests = rng.choice(clusters, size=(n_users, 4), p=p_cluster).astype(np.int32)
    n_interests = rng.integers(1, 5, n_users).astype(np.int8)
    activity = rng.lognormal(0.0, 1.0, n_users)
    per_user = 1 + rng.multinomial(n_clicks - n_users, activity / activity.sum())
    user = np.repeat(np.arange(n_users, dtype=np.int32), per_user)
    starts = np.concatenate(([0], np.cumsum(per_user)[:-1]))

    new_session = rng.random(n_clicks) < 1.0 / session_clicks
    new_session[starts] = True
    session = np.cumsum(new_session) - 1
    session_user = user[new_session]
    # interest j of a user is chosen with weight primary**j (the first one dominates)
    share = primary ** np.arange(4)
    cum = np.cumsum(share)
    u_pick = rng.random(len(session_user)) * cum[n_interests[session_user] - 1]
    pick_interest = np.searchsorted(cum, u_pick, side="right")
    session_cluster = interests[session_user, pick_interest]
    item = pick(session_cluster[session])
    noisy = rng.random(n_clicks) < noise
    item[noisy] = pick(rng.choice(clusters, size=int(noisy.sum()), p=p_cluster))
    hits = rng.random(n_clicks) < popular_share

    # sessions start at uniform random times over the span, in order per user; clicks
    # within a session follow each other by 1 + Exp(click_gap) seconds
    n_sessions = len(session_user)
    start_ts = rng.uniform(0.0, span, n_sessions)
    start_ts = start_ts[np.lexsort((start_ts, session_user))]
    gap = 1.0 + rng.exponential(click_gap, n_clicks)
    gap[new_session] = 0.0
    cs = np.cumsum(gap)
    per_session = np.bincount(session, minlength=n_sessions)
    offset = cs - np.repeat(cs[new_session], per_session)
    # push each session past the end of the user's previous ones: sessions never overlap
    duration = np.zeros(n_sessions)
    np.maximum.at(duration, session, offset)
    duration += 1.0
    shift = np.cumsum(duration) - duration
    first_session = session[starts]
    shift -= np.repeat(shift[first_session], np.diff(np.append(first_session, n_sessions)))
    ts = np.round(START_TS + start_ts[session] + shift[session] + offset, 3)
    item[hits] = _global_hits(ts[hits] - START_TS, n_items, popular_zipf, trend,
                              trend_days, rng)

    events = None
    if event_ids:
        # numbered in time order, as a producer would
        rank = np.empty(n_clicks, dtype=np.int64)
        rank[np.argsort(ts, kind="stable")] = np.arange(n_clicks)
        events = np.array([f"s{seed}-{r}" for r in rank.tolist()], dtype=object)

    log = ClickLog(
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        user=user, item=item.astype(np.int32), ts=ts,
        weight=np.ones(n_clicks, dtype=np.float32), event_id=events,
    )
    return GeneratedLog(log, item_cluster, interests, n_interests, clusters, hits)


def cluster_vectors(item_cluster: np.ndarray, dim: int, seed: int = 0,
                    spread: float = 0.5) -> np.ndarray:
    """Item vectors from a mixture: one random unit centre per cluster plus isotropic
    Gaussian noise of norm about ``spread``; rows L2-normalised, float32, shape
    (n_items, dim). Drawn by :func:`offline.synthetic.clustered_vectors`."""
    from offline.synthetic import clustered_vectors

    return clustered_vectors(item_cluster, dim, spread=(spread, spread), intrinsic=1,
                             isotropic=1.0, seed=seed + 7919)
