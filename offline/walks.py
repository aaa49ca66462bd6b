"""Random walks over the item co-click graph: DeepWalk and Node2Vec (p, q), vectorised.

The graph: items are nodes; two items clicked one after the other in a session are joined
by an undirected edge whose weight is how often that happened (the "session graph" of
Alibaba's EGES and of the DeepWalk/Node2Vec recommenders). Walks are then sentences for
the same skip-gram as item2vec (:mod:`offline.train`).

Every walker moves at once, one step per numpy call, so a step costs a few vectorised
operations over all walkers, never a Python loop per walker:

- DeepWalk: the next node is drawn in proportion to the edge weights, by a
  ``searchsorted`` into the CSR matrix's cumulated weights;
- Node2Vec (Grover & Leskovec, 2016) biases the draw by where the walker came from:
  weight x 1/p to go back, x 1 to a neighbour of the previous node, x 1/q further out.
  Drawn by rejection (as in KnightKing / PecanPy's SparseOTF): propose by weight, accept
  with the bias over its maximum; "is x a neighbour of prev" is a ``searchsorted`` into
  the sorted edge keys. Walkers that reject redraw, the others wait.

Why not a library: PecanPy (the maintained Node2Vec) pins numpy < 2, and the small
packages around bundle their own Word2Vec training loop; the walks are these few numpy
lines, the skip-gram stays gensim's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass
class CoClickGraph:
    names: list[str]  # node -> item id
    adj: sparse.csr_matrix  # (n, n) symmetric, float64 weights, sorted indices

    def __len__(self) -> int:
        return len(self.names)


def coclick_graph(sessions: list[list[str]]) -> CoClickGraph:
    """Items joined by how often they were clicked one right after the other."""
    vocab: dict[str, int] = {}
    flat = [vocab.setdefault(i, len(vocab)) for s in sessions for i in s]
    codes = np.asarray(flat, dtype=np.int64)
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    # consecutive pairs inside a session: every position except each session's last
    last = np.cumsum(lengths) - 1
    keep = np.ones(len(codes), dtype=bool)
    keep[last] = False
    src = codes[keep]
    dst = codes[np.flatnonzero(keep) + 1]
    loop = src == dst  # a repeated click is not an edge
    src, dst = src[~loop], dst[~loop]
    n = len(vocab)
    w = np.ones(2 * len(src))
    adj = sparse.coo_matrix((w, (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                            shape=(n, n)).tocsr()
    adj.sum_duplicates()
    adj.sort_indices()
    # nodes without an edge (only ever repeated) cannot be walked: leave them out
    deg = np.diff(adj.indptr)
    if (deg == 0).any():
        alive = np.flatnonzero(deg > 0)
        adj = adj[alive][:, alive].tocsr()
        adj.sort_indices()
        names = list(vocab)
        return CoClickGraph([names[i] for i in alive.tolist()], adj)
    return CoClickGraph(list(vocab), adj)


def random_walks(graph: CoClickGraph, walks_per_node: int, walk_length: int,
                 p: float = 1.0, q: float = 1.0, seed: int = 0) -> np.ndarray:
    """(walks_per_node * n, walk_length) node codes; p = q = 1 is DeepWalk."""
    if walks_per_node < 1 or walk_length < 2:
        raise ValueError("walks_per_node must be >= 1 and walk_length >= 2")
    if p <= 0 or q <= 0:
        raise ValueError("p and q must be > 0")
    rng = np.random.default_rng(seed)
    adj = graph.adj
    n = adj.shape[0]
    indptr, indices = adj.indptr, adj.indices.astype(np.int64)
    cum = np.cumsum(adj.data)  # global cumulated weights, row after row
    row_start = np.concatenate([[0.0], cum])[indptr[:-1]]  # cum before each row
    row_total = np.asarray(adj.sum(axis=1)).ravel()
    edge_key = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr)) * n + indices

    def draw(cur: np.ndarray) -> np.ndarray:
        target = row_start[cur] + rng.random(len(cur)) * row_total[cur]
        pos = np.searchsorted(cum, target, side="right")
        # float rounding at a row's end: stay inside the row
        pos = np.clip(pos, indptr[cur], indptr[cur + 1] - 1)
        return indices[pos]

    starts = np.tile(np.arange(n, dtype=np.int64), walks_per_node)
    rng.shuffle(starts)
    walks = np.empty((len(starts), walk_length), dtype=np.int64)
    walks[:, 0] = starts
    walks[:, 1] = draw(starts)
    biased = not (p == 1.0 and q == 1.0)
    bias_max = max(1.0 / p, 1.0, 1.0 / q)
    for step in range(2, walk_length):
        cur, prev = walks[:, step - 1], walks[:, step - 2]
        if not biased:
            walks[:, step] = draw(cur)
            continue
        nxt = np.empty_like(cur)
        todo = np.arange(len(cur))
        while len(todo):
            x = draw(cur[todo])
            pv = prev[todo]
            key = pv * n + x
            at = np.minimum(np.searchsorted(edge_key, key), len(edge_key) - 1)
            near = edge_key[at] == key
            bias = np.where(x == pv, 1.0 / p, np.where(near, 1.0, 1.0 / q))
            ok = rng.random(len(todo)) * bias_max < bias
            nxt[todo[ok]] = x[ok]
            todo = todo[~ok]
        walks[:, step] = nxt
    return walks


def walk_sentences(graph: CoClickGraph, walks: np.ndarray) -> list[list[str]]:
    """Walks as lists of item ids (gensim's sentences)."""
    names = np.asarray(graph.names, dtype=object)
    return names[walks].tolist()
