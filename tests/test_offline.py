"""Offline jobs: generator structure, log reading/writing and its errors, item2vec, the batch
user windows, evaluation. Pure Python/numpy (no servers); see test_offline_load.py for
Redis and Kafka."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from offline.clicklog import ClickLogError, read_log, write_log
from offline.evaluate import EvalConfig, evaluate, time_split
from offline.generate import cluster_vectors, generate_clicks
from offline.train import TrainParams, sessions, train_item2vec
from offline.userwin import user_windows
from offline.vectors import VectorFileError, load_vectors, save_vectors
from recall.cli import main
from recall.users import RollingUserVectors


@pytest.fixture(scope="module")
def gen():
    # interest-only clicks (no global-popularity share): these tests check that the
    # generator's interests and sessions are there and that item2vec + LSH learn them;
    # clicks on global hits, which no interest embedding predicts, are tested apart
    return generate_clicks(1500, 1500, 45_000, seed=3, popular_share=0.0)


@pytest.fixture(scope="module")
def trained(gen):
    ids, vectors = train_item2vec(gen.log, TrainParams(epochs=5, seed=1), progress=False)
    return ids, vectors


# --- generator ------------------------------------------------------------------


def test_generator_is_seeded_and_shaped(gen):
    again = generate_clicks(1500, 1500, 45_000, seed=3, popular_share=0.0)
    assert np.array_equal(gen.log.item, again.log.item)
    assert np.array_equal(gen.log.ts, again.log.ts)
    other = generate_clicks(1500, 1500, 45_000, seed=4, popular_share=0.0)
    assert not np.array_equal(gen.log.item, other.log.item)
    log = gen.log
    assert len(log) == 45_000
    assert set(np.unique(log.user)) == set(range(1500))  # every user clicks
    assert len(set(log.event_id.tolist())) == len(log)  # unique event ids
    same_user = log.user[1:] == log.user[:-1]
    assert np.all(np.diff(log.ts)[same_user] >= 0)  # sorted by (user, ts)


def test_generator_has_skew_interests_and_sessions(gen):
    log, cl = gen.log, gen.item_cluster
    counts = np.sort(np.bincount(log.item, minlength=1500))[::-1]
    assert counts[:15].sum() > 0.08 * len(log)  # top 1% of items: far above 1% of clicks
    # a user's clicks fall (noise aside) on at most 4 clusters: their interests
    share_in_interests = []
    for u in range(0, 1500, 50):
        rows = log.user == u
        ints = gen.user_interests[u, : gen.n_interests[u]]
        share_in_interests.append(np.isin(cl[log.item[rows]], ints).mean())
    assert np.mean(share_in_interests) > 0.9
    # consecutive clicks of a user less than 10 min apart (a session) share the cluster
    same_user = log.user[1:] == log.user[:-1]
    close = same_user & (np.diff(log.ts) < 600)
    far = same_user & (np.diff(log.ts) > 6 * 3600)
    same_cluster = cl[log.item[1:]] == cl[log.item[:-1]]
    assert same_cluster[close].mean() > 0.8
    assert same_cluster[close].mean() > same_cluster[far].mean() + 0.2


def test_cluster_vectors_follow_clusters(gen):
    v = cluster_vectors(gen.item_cluster, 16, seed=1)
    assert v.shape == (1500, 16) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    cl = gen.item_cluster
    sims = v @ v.T
    same = cl[:, None] == cl[None, :]
    assert sims[same].mean() > sims[~same].mean() + 0.3


# --- logs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["log.jsonl", "log.csv", "log.jsonl.gz", "log.csv.gz"])
def test_log_roundtrip(tmp_path: Path, name: str):
    log = generate_clicks(50, 40, 600, seed=1).log
    log.weight[::7] = 2.5
    write_log(log, tmp_path / name)
    back = read_log(tmp_path / name)
    assert len(back) == len(log)
    key = lambda lg: sorted(  # noqa: E731
        zip([lg.user_ids[u] for u in lg.user], [lg.item_ids[i] for i in lg.item],
            lg.ts.tolist(), lg.weight.tolist(), lg.event_id.tolist(), strict=True))
    assert key(back) == key(log)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp files left


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = '{"user_id": "u1", "item_id": "i1", "ts": 1.0}\n'


@pytest.mark.parametrize(("name", "text", "where", "why"), [
    ("a.jsonl", GOOD + GOOD + "{not json\n", ":3:", "not_json"),
    ("b.jsonl", GOOD + '{"user_id": "u1", "item_id": "i1"}\n', ":2:", "'ts' is required"),
    ("c.jsonl", GOOD + '{"user_id": 5, "item_id": "i1", "ts": 1}\n', ":2:", "wrong_type"),
    ("d.jsonl", GOOD + "[1, 2]\n", ":2:", "not_object"),
    ("e.jsonl", GOOD + '{"user_id": "u", "item_id": "i", "ts": 1, "weight": -1}\n', ":2:",
     "weight"),
    ("f.csv", "user_id,item,ts\nu1,i1,1\n", ":1:", "unknown column(s) 'item'"),
    ("g.csv", "user_id,item_id,ts\nu1,i1,1\nu2,i2,yesterday\n", ":3:", "ts is not a number"),
    ("h.csv", "user_id,item_id,ts\nu1,i1,1\nu2,i2\n", ":3:", "expected 3 fields"),
    ("i.csv", "user_id,item_id\nu1,i1\n", ":1:", "missing column(s) ts"),
    ("j.jsonl", "\n\n", "", "no clicks"),
    ("k.csv", "", "", "no clicks"),
])
def test_bad_logs_name_file_and_line(tmp_path, name, text, where, why):
    path = _bad(tmp_path, name, text)
    with pytest.raises(ClickLogError) as err:
        read_log(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}{where}"), msg
    assert why in msg


def test_bad_log_through_cli_leaves_no_output(tmp_path, capsys):
    path = _bad(tmp_path, "bad.jsonl", GOOD + "oops\n")
    out = tmp_path / "items.npz"
    assert main(["train", str(path), "--out", str(out), "-q"]) == 2
    assert f"{path}:2: " in capsys.readouterr().err
    assert not out.exists()
    assert main(["eval", str(tmp_path / "missing.jsonl"), "-q"]) == 2
    assert "missing.jsonl: cannot open" in capsys.readouterr().err


def test_gen_cli_writes_log_and_rejects_bad_sizes(tmp_path, capsys):
    out = tmp_path / "clicks.csv"
    assert main(["gen", "--users", "30", "--items", "20", "--clicks", "300",
                 "--out", str(out), "-q"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["clicks"] == 300
    assert len(read_log(out)) == 300
    bad = tmp_path / "bad.jsonl"
    assert main(["gen", "--users", "30", "--items", "20", "--clicks", "10",
                 "--out", str(bad), "-q"]) == 2
    assert "must be >= users" in capsys.readouterr().err
    assert not bad.exists()


# --- vectors --------------------------------------------------------------------


def test_vector_file_roundtrip_and_errors(tmp_path):
    ids = ["a", "b", "c"]
    v = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    save_vectors(tmp_path / "v.npz", ids, v / np.linalg.norm(v, axis=1, keepdims=True))
    got_ids, got = load_vectors(tmp_path / "v.npz", 8)
    assert got_ids == ids and np.allclose(np.linalg.norm(got, axis=1), 1)
    with pytest.raises(VectorFileError, match=r"v\.npz: vectors have dimension 8, expected 64"):
        load_vectors(tmp_path / "v.npz", 64)
    v[1] = 0
    np.savez(tmp_path / "z.npz", ids=np.array(ids), vectors=v)
    with pytest.raises(VectorFileError, match=r"z\.npz: vector of item 'b' \(row 1\) is zero"):
        load_vectors(tmp_path / "z.npz", 8)
    (tmp_path / "t.npz").write_bytes(b"garbage")
    with pytest.raises(VectorFileError, match=r"t\.npz: not a vector file"):
        load_vectors(tmp_path / "t.npz", 8)


# --- item2vec ---------------------------------------------------------------------


def test_sessions_cut_at_gaps():
    log = generate_clicks(3, 5, 3, seed=0, event_ids=False).log
    log.user[:] = 0
    log.ts[:] = [0.0, 10.0, 5000.0]
    log.item[:] = [0, 1, 2]
    assert sessions(log, 1800) == [["i0", "i1"]]  # the lone last click is dropped
    assert sessions(log, 10_000) == [["i0", "i1", "i2"]]


def test_item2vec_neighbours_share_the_interest_cluster(gen, trained):
    ids, vectors = trained
    assert vectors.dtype == np.float32 and vectors.shape[1] == 64
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cl = gen.item_cluster[[int(i[1:]) for i in ids]]
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :10]
    same = (cl[nn] == cl[:, None]).mean()
    chance = np.mean(np.bincount(cl)[cl] / len(cl))
    assert same > 0.6 and same > 10 * chance, (same, chance)


# --- user windows -------------------------------------------------------------------


@pytest.mark.parametrize("half_life", [0.0, 3600.0])
def test_batch_windows_match_rolling_user_vectors(gen, trained, half_life):
    ids, vectors = trained
    log = gen.log.take(np.isin(gen.log.user, np.arange(40)))
    log.weight[::3] = 2.0
    win = user_windows(log, ids, vectors, window=7, half_life=half_life)
    row = {item_id: r for r, item_id in enumerate(ids)}

    def lookup(items):
        r = np.array([row.get(i, -1) for i in items])
        out = np.zeros((len(items), vectors.shape[1]), np.float32)
        out[r >= 0] = vectors[r[r >= 0]]
        return out, r >= 0

    policy = RollingUserVectors(vectors.shape[1], 7, half_life, lookup=lookup)
    for j, u in enumerate(win.users.tolist()):
        state = policy.new_state()
        for k in np.flatnonzero(log.user == u).tolist():
            name = log.item_ids[log.item[k]]
            vec = vectors[row[name]] if name in row else None
            policy.apply(state, name, float(log.ts[k]), float(log.weight[k]), vec)
        expect = state.vector()
        assert (expect is not None) == bool(win.usable[j])
        if expect is not None:
            np.testing.assert_allclose(win.vectors[j], expect, rtol=1e-4, atol=1e-5)


# --- evaluation ---------------------------------------------------------------------


def test_eval_item2vec_lsh_beats_popular_and_tracks_exact(gen, tmp_path):
    from recall.lsh import LSHParams

    train, test, cutoff = time_split(gen.log, 0.1)
    assert train.ts.max() < cutoff <= test.ts.min()
    ids, vectors = train_item2vec(train, TrainParams(seed=1), progress=False)
    params = LSHParams(dim=64, k=6, L=12, w=1.0, T=8)
    res = evaluate(train, test, ids, vectors, EvalConfig(k=10), params=params, now=cutoff)
    m = res["methods"]
    assert res["users_evaluated"] > 300
    assert m["lsh"]["hit_rate"] > m["popular"]["hit_rate"] + 0.03, m
    assert m["exact"]["recall"] > m["popular"]["recall"], m
    assert abs(m["lsh"]["hit_rate"] - m["exact"]["hit_rate"]) <= 0.02
    assert res["lsh_recall_vs_exact"] > 0.8
    assert m["lsh"]["coverage"] > 5 * m["popular"]["coverage"]
    for r in m.values():  # HitRate@j grows with j and ends at HitRate@k
        assert np.all(np.diff(r["hit_rate_at"]) >= 0)
        assert r["hit_rate_at"][-1] == pytest.approx(r["hit_rate"], abs=1e-4)


def test_eval_cli_prints_table_json_and_plot(tmp_path, capsys):
    log = tmp_path / "clicks.jsonl.gz"
    assert main(["gen", "--users", "400", "--items", "400", "--clicks", "12000",
                 "--out", str(log), "-q"]) == 0
    with gzip.open(log, "rt") as f:
        assert json.loads(f.readline()).keys() >= {"user_id", "item_id", "ts", "event_id"}
    capsys.readouterr()
    plot = tmp_path / "eval.png"
    assert main(["eval", str(log), "--plot", str(plot), "-q", "--epochs", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["method", "HitRate@10"]
    res = json.loads(out[-1])
    assert set(res["methods"]) == {"lsh", "exact", "popular", "recent-popular", "cooc"}
    assert res["protocol"] == "last" and res["users_evaluated"] > 150
    assert res["tune"]["recall_exclude_seen"] > 0  # tuned here, checked with exclude_seen
    assert plot.stat().st_size > 1000
    assert (tmp_path / "eval-embedding.png").stat().st_size > 1000  # the embedding report
    assert set(res["embedding"]["similarity_median"]) == {
        "random pairs", "consecutive clicks", "last item -> next item"}


# --- tuning on the worker's queries ---------------------------------------------------


def test_log_queries_carry_each_users_window_items(gen, trained):
    from offline.tune import log_queries

    ids, vectors = trained
    log = gen.log.take(np.isin(gen.log.user, np.arange(30)))
    q = log_queries(log, ids, vectors, window=5, limit=10, seed=2)
    assert q.vectors.shape == (10, 64) and len(q.seen) == 10
    assert np.allclose(np.linalg.norm(q.vectors, axis=1), 1, atol=1e-5)
    win = user_windows(log, ids, vectors, window=5)
    rows = np.flatnonzero(win.usable)
    unit = win.vectors[rows] / np.linalg.norm(win.vectors[rows], axis=1, keepdims=True)
    for vec, seen in zip(q.vectors, q.seen, strict=True):
        # the user whose window vector this query is (nearest, not rounded: a value on a
        # rounding boundary made a dict keyed by rounded vectors miss now and then)
        nearest = int(np.argmax(unit @ vec))
        assert np.allclose(unit[nearest], vec, atol=1e-4)
        j = int(rows[nearest])
        last = log.item[log.user == win.users[j]][-5:]
        assert seen == sorted({log.item_ids[i] for i in last.tolist()})


def test_recall_with_exclusion_leaves_window_items_out(gen, trained):
    from offline.tune import log_queries, recall_with_exclusion
    from recall.lsh import LSHIndex, LSHParams

    ids, vectors = trained
    q = log_queries(gen.log, ids, vectors, window=10, limit=100, seed=1)
    # one bit per table, both buckets probed: every item is a candidate -> exact, up to
    # near-ties that the index's half-precision vectors (VECTOR_DTYPE) may swap
    full = LSHIndex(LSHParams(family="simhash", dim=64, k=1, L=2, T=2))
    full.add(ids, vectors)
    assert recall_with_exclusion(full, ids, vectors, q, 10) >= 0.99
    for vec, seen in zip(q.vectors[:20], q.seen[:20], strict=True):
        assert not set(full.search(vec, 10, [seen])[0].ids) & set(seen)
    narrow = LSHIndex(LSHParams(family="simhash", dim=64, k=16, L=1, T=1))
    narrow.add(ids, vectors)
    assert recall_with_exclusion(narrow, ids, vectors, q, 10) < 0.9


def test_tune_params_meet_the_target_with_exclude_seen(gen, trained):
    from offline.tune import log_queries, recall_with_exclusion, tune_params
    from recall.lsh import LSHIndex

    ids, vectors = trained
    q = log_queries(gen.log, ids, vectors, window=20, limit=300, seed=0)
    params, summary, figures = tune_params(vectors, q, 0.9, 10, 0, ids=ids, progress=False)
    assert "checked with exclude_seen" in summary
    assert figures["recall_exclude_seen"] >= 0.9 or params.T == 128
    assert figures["probes_raised_from"] <= params.T
    index = LSHIndex(params)
    index.add(ids, vectors)
    assert recall_with_exclusion(index, ids, vectors, q, 10) == pytest.approx(
        figures["recall_exclude_seen"], abs=1e-4)
