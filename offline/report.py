"""The embedding report of ``recall eval --plot``: is the vector space any good, and what
does each method recall?

Three panels (matplotlib, PNG), figures also returned for the JSON line:

- **similarity spread**: cosine similarity of random item pairs, of items clicked one
  after the other in training (what item2vec was fitted to) and of each evaluated user's
  last training item with their held-out next item. Useful vectors put the last two well
  right of the first; a narrow spread near 1 means collapsed vectors, one near 0 noise;
- **popularity bias**: the distribution of training click counts of the items each
  method recalls, against that of the items users really clicked next. A method left of
  the truth under-recommends hits, one right of it only recalls hits;
- **map**: the item vectors projected on their first two principal components (numpy
  SVD), coloured by log training popularity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from offline.clicklog import ClickLog


def _pca2(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def similarity_spread(train: ClickLog, vectors: np.ndarray, row_of_code: np.ndarray,
                      users: np.ndarray, next_item: np.ndarray, seed: int = 0,
                      pairs: int = 20_000) -> dict[str, np.ndarray]:
    """Cosine similarities of random item pairs, consecutive training clicks, and each
    user's last training item vs their next held-out item (pairs with both vectors)."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    a, b = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    keep = a != b
    out = {"random pairs": np.einsum("ij,ij->i", vectors[a[keep]], vectors[b[keep]])}
    same = np.flatnonzero(train.user[1:] == train.user[:-1])
    same = same[rng.choice(len(same), min(pairs, len(same)), replace=False)] if len(
        same) else same
    ra, rb = row_of_code[train.item[same]], row_of_code[train.item[same + 1]]
    ok = (ra >= 0) & (rb >= 0) & (ra != rb)
    out["consecutive clicks"] = np.einsum("ij,ij->i", vectors[ra[ok]], vectors[rb[ok]])
    last = train.user_bounds()[1:] - 1
    last_item = np.full(int(train.user.max()) + 1 if len(train) else 0, -1, dtype=np.int64)
    last_item[train.user[last]] = train.item[last]
    ra, rb = row_of_code[last_item[users]], row_of_code[next_item]
    ok = (last_item[users] >= 0) & (ra >= 0) & (rb >= 0)
    out["last item -> next item"] = np.einsum("ij,ij->i", vectors[ra[ok]], vectors[rb[ok]])
    return out


def report(train: ClickLog, ids: list[str], vectors: np.ndarray, details: dict[str, Any],
           path: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Figures of the three panels (medians, shares); the PNG when ``path`` is given."""
    row_of_code = details["row_of_code"]
    counts = np.bincount(train.item, minlength=len(row_of_code)).astype(np.float64)
    sims = similarity_spread(train, vectors, row_of_code, details["users"],
                             details["next_item"], seed)
    pops = {name: counts[p[p >= 0]] for name, p in details["predictions"].items()}
    pops["next click (truth)"] = counts[details["next_item"]]
    figures: dict[str, Any] = {
        "similarity_median": {k: round(float(np.median(v)), 4) if len(v) else None
                              for k, v in sims.items()},
        "recalled_popularity_median": {k: float(np.median(v)) if len(v) else None
                                       for k, v in pops.items()},
    }
    if path is None:
        return figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    bins = np.linspace(-1, 1, 81)
    for name, v in sims.items():
        if len(v):
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.5,
                    label=f"{name} (median {np.median(v):.2f})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title("similarity spread")
    ax.legend(fontsize=8)
    ax = axes[1]
    top = max(float(counts.max()), 1.0)
    bins = np.logspace(0, np.log10(top + 1), 40)
    for name, v in pops.items():
        if len(v):
            ax.hist(v + 1, bins=bins, density=True, histtype="step", lw=1.5,
                    ls="--" if "truth" in name else "-",
                    label=f"{name} (median {np.median(v):.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("training clicks of the item + 1")
    ax.set_ylabel("density")
    ax.set_title("popularity of recalled items vs the next click")
    ax.legend(fontsize=8)
    ax = axes[2]
    xy = _pca2(vectors.astype(np.float64))
    rows_pop = np.zeros(len(ids))
    has = row_of_code >= 0
    rows_pop[row_of_code[has]] = counts[np.flatnonzero(has)]
    order = np.argsort(rows_pop)  # popular items drawn last, on top
    sc = ax.scatter(xy[order, 0], xy[order, 1], c=np.log10(rows_pop[order] + 1), s=3,
                    cmap="viridis", alpha=0.7, linewidths=0)
    fig.colorbar(sc, ax=ax, label="log10(training clicks + 1)")
    ax.set_title(f"item vectors, first 2 principal components ({len(ids)} items)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return figures
