"""Graph walks, trainer reproducibility, the model search and the settings it hands on."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

from offline.generate import generate_clicks
from offline.model import model_path
from offline.train import METHODS, TrainParams, train_embeddings
from offline.walks import coclick_graph, random_walks, walk_sentences
from recall.cli import main


def _transitions(walks: np.ndarray) -> np.ndarray:
    return np.stack([walks[:, :-1].ravel(), walks[:, 1:].ravel()], axis=1)


def test_deepwalk_steps_along_edges_in_proportion_to_their_weight():
    # a-b clicked one after the other twice, a-c once, c-d once
    graph = coclick_graph([["a", "b"], ["b", "a"], ["a", "c", "d"]])
    code = {name: i for i, name in enumerate(graph.names)}
    walks = random_walks(graph, walks_per_node=4000, walk_length=6, seed=1)
    steps = _transitions(walks)
    edges = {(code[x], code[y]) for x, y in [("a", "b"), ("a", "c"), ("c", "d")]}
    edges |= {(y, x) for x, y in edges}
    assert {tuple(s) for s in steps.tolist()} <= edges  # every step is an edge
    from_a = steps[steps[:, 0] == code["a"], 1]
    share_b = float(np.mean(from_a == code["b"]))
    assert 0.64 < share_b < 0.69  # weight 2 of 3
    assert walk_sentences(graph, walks[:1])[0][0] in graph.names


@pytest.mark.parametrize(("p", "q", "expected"), [
    (0.1, 1.0, 10 / 13),  # back weight 1/p = 10 against three leaves at 1/q = 1
    (10.0, 1.0, 0.1 / 3.1),
    (1.0, 0.1, 1 / 31),  # outward weight 1/q = 10 each
])
def test_node2vec_biases_the_step_back_by_p_and_outward_by_q(p, q, expected):
    # a star: from a leaf the walk goes to the centre, then back (1/p) or to another
    # leaf, which is not a neighbour of the previous one (1/q)
    graph = coclick_graph([["hub", leaf] for leaf in "abcd"])
    hub = graph.names.index("hub")
    walks = random_walks(graph, walks_per_node=3000, walk_length=3, p=p, q=q, seed=2)
    from_leaf = walks[walks[:, 0] != hub]
    assert (from_leaf[:, 1] == hub).all()
    back = float(np.mean(from_leaf[:, 2] == from_leaf[:, 0]))
    assert abs(back - expected) < 0.025


def test_p_and_q_must_be_positive():
    graph = coclick_graph([["a", "b"]])
    with pytest.raises(ValueError):
        random_walks(graph, 1, 3, p=0.0)


@pytest.fixture(scope="module")
def small_log():
    return generate_clicks(300, 300, 8000, seed=4).log


@pytest.mark.parametrize("method", METHODS)
def test_one_worker_and_a_seed_train_bit_for_bit_the_same_vectors(small_log, method):
    params = TrainParams(method=method, epochs=2, workers=1, seed=7, walks_per_node=3)
    ids1, v1 = train_embeddings(small_log, params, progress=False)
    ids2, v2 = train_embeddings(small_log, params, progress=False)
    assert ids1 == ids2
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, rtol=1e-5)
    _, v3 = train_embeddings(small_log, TrainParams(method=method, epochs=2, workers=1,
                                                    seed=8, walks_per_node=3),
                             progress=False)
    assert not np.array_equal(v1, v3)


def test_the_epoch_callback_can_stop_a_training(small_log):
    seen = []

    def stop(epoch, ids, vectors):
        seen.append((epoch, len(ids), vectors.shape))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_embeddings(small_log, TrainParams(epochs=5, workers=1), progress=False,
                         on_epoch=stop)
    assert len(seen) == 1 and seen[0][0] == 1 and seen[0][2][1] == 64


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    log = d / "clicks.jsonl"
    assert main(["gen", "--users", "400", "--items", "300", "--clicks", "12000",
                 "--out", str(log), "-q", "--seed", "3"]) == 0
    return log


def _train_search(log, out, *extra):
    return main(["train", str(log), "--out", str(out), "--search", "--trials", "3",
                 "--workers", "1", "--seed", "5", "-q", *extra])


def test_train_search_writes_its_choice_beside_the_vectors_reproducibly(
        log_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RECALL_USER_WINDOW", raising=False)
    monkeypatch.delenv("RECALL_USER_DECAY_HALF_LIFE", raising=False)
    assert _train_search(log_file, tmp_path / "a.npz") == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    doc = json.loads(model_path(tmp_path / "a.npz").read_text())
    assert doc["user"] == out["user"] == out["search"]["chosen"]["user"]
    assert doc["train"]["method"] == out["method"]
    assert out["search"]["trials"] == 3
    # the defaults are the first trial: the choice is never worse on validation
    assert out["search"]["validation_hit_rate"] >= out["search"][
        "defaults_validation_hit_rate"]
    assert _train_search(log_file, tmp_path / "b.npz") == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["search"]["chosen"] == out["search"]["chosen"]
    a = np.load(tmp_path / "a.npz")
    b = np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["vectors"], b["vectors"])


def test_an_explicit_user_window_is_not_searched(log_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECALL_USER_WINDOW", "7")
    assert _train_search(log_file, tmp_path / "c.npz") == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["user"]["window"] == 7
    assert all("user_window" not in t["params"] for t in out["search"]["top"])


def test_a_plain_train_writes_the_default_user_settings(log_file, tmp_path, capsys,
                                                        monkeypatch):
    from offline.model import DEFAULT_USER

    monkeypatch.delenv("RECALL_USER_WINDOW", raising=False)
    monkeypatch.delenv("RECALL_USER_DECAY_HALF_LIFE", raising=False)
    assert main(["train", str(log_file), "--out", str(tmp_path / "d.npz"), "-q",
                 "--method", "deepwalk", "--epochs", "2"]) == 0
    doc = json.loads(model_path(tmp_path / "d.npz").read_text())
    assert doc["user"] == DEFAULT_USER.to_dict()
    assert doc["train"]["method"] == "deepwalk"


@pytest.mark.integration
async def test_load_carries_the_chosen_user_settings_into_the_version(
        log_file, tmp_path, redis_url, redis_prefix, monkeypatch, capsys):
    from offline.vectors import params_path
    from recall.lsh import LSHParams
    from recall.store import Store
    from recall.userstate import UserState

    vectors = tmp_path / "e.npz"
    assert main(["train", str(log_file), "--out", str(vectors), "-q", "--epochs", "2"]) == 0
    doc = json.loads(model_path(vectors).read_text())
    doc["user"] = {"window": 3, "half_life": 600.0}
    model_path(vectors).write_text(json.dumps(doc))
    params_path(vectors).write_text(json.dumps(
        {"params": LSHParams(dim=64, k=6, L=4, T=2).to_dict()}))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RECALL_REDIS_PREFIX", redis_prefix)
    monkeypatch.delenv("RECALL_USER_DECAY_HALF_LIFE", raising=False)
    store = Store.from_url(redis_url, redis_prefix)
    try:
        for env_window, stored_window in ((None, 3), ("9", 9)):
            if env_window is None:
                monkeypatch.delenv("RECALL_USER_WINDOW", raising=False)
            else:
                monkeypatch.setenv("RECALL_USER_WINDOW", env_window)
            assert await asyncio.to_thread(
                main, ["load", str(vectors), "--log", str(log_file), "-q"]) == 0
            out = json.loads(capsys.readouterr().out.splitlines()[-1])
            meta = await store.get_meta(out["version"])
            # the version keeps what training chose; the users' windows follow what the
            # worker will use (an explicit variable wins)
            assert meta["user"] == {"window": 3, "half_life": 600.0}
            assert out["user"]["window"] == stored_window
            uid = "u1"
            state = UserState.from_bytes((await store.get_users([uid]))[uid], 64)
            assert len(state.window) == stored_window
    finally:
        await store.close()


def test_eval_search_never_reads_the_test_clicks(log_file, tmp_path, capsys, monkeypatch):
    """Poison every held-out click (each user's last, under --protocol last): the search
    must choose the same settings with the same validation figures."""
    from offline.clicklog import read_log, write_log

    for var in ("RECALL_USER_WINDOW", "RECALL_USER_DECAY_HALF_LIFE"):
        monkeypatch.delenv(var, raising=False)
    clicks = read_log(log_file)
    bounds = clicks.user_bounds()
    last = bounds[1:] - 1
    # held-out clicks whose ts ties with the user's click before could change places with
    # it when the file is rewritten (the split would move): poison the others
    last = last[(np.diff(bounds) > 1) & (clicks.ts[last] > clicks.ts[last - 1])]
    assert len(last) > 300
    poisoned_item = clicks.item.copy()
    poisoned_item[last] = (poisoned_item[last] + 17) % len(clicks.item_ids)
    assert (poisoned_item != clicks.item).sum() == len(last)
    poisoned = tmp_path / "poisoned.jsonl"
    write_log(dataclasses.replace(clicks, item=poisoned_item), poisoned, progress=False)

    def searched(log):
        assert main(["eval", str(log), "--protocol", "last", "--search", "--trials", "3",
                     "--workers", "1", "--seed", "5", "--methods", "exact,popular",
                     "--bootstrap", "0", "-q"]) == 0
        res = json.loads(capsys.readouterr().out.splitlines()[-1])
        return res, {k: v for k, v in res["search"].items() if k != "seconds"}

    res, clean = searched(log_file)
    res_p, dirty = searched(poisoned)
    assert dirty == clean
    # ... while the test figures do see the poison
    assert res_p["methods"]["exact"]["hit_rate"] != res["methods"]["exact"]["hit_rate"]


def test_the_popularity_component_grows_with_clicks_and_vectors_stay_unit(small_log):
    from offline.train import with_popularity

    params = TrainParams(epochs=1, workers=1, pop_weight=1.0, min_count=1)
    ids, vectors = train_embeddings(small_log, params, progress=False)
    assert vectors.shape[1] == 64  # one of RECALL_DIM carries popularity
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    counts = np.bincount(small_log.item, minlength=len(small_log.item_ids))
    code = {item_id: c for c, item_id in enumerate(small_log.item_ids)}
    n = counts[[code[i] for i in ids]]
    raw = np.ones((len(ids), 3), dtype=np.float32) / np.sqrt(3)
    pop = with_popularity(small_log, ids, raw, 2.0)[:, -1]
    order = np.argsort(n, kind="stable")
    assert (np.diff(pop[order]) >= -1e-7).all() and pop[order[-1]] > pop[order[0]]


@pytest.mark.parametrize("which", ["out", "in+out"])
def test_item_vectors_can_be_the_output_or_summed_vectors(small_log, which):
    base = TrainParams(epochs=1, workers=1, seed=2, vectors="in")
    ids, vin = train_embeddings(small_log, base, progress=False)
    ids2, other = train_embeddings(small_log, dataclasses.replace(base, vectors=which),
                                   progress=False)
    assert ids == ids2 and other.shape == vin.shape
    np.testing.assert_allclose(np.linalg.norm(other, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(other, vin)


def test_the_cli_trains_with_the_documented_defaults():
    """`recall train` without flags = TrainParams() (the defaults docs/offline.md argues
    for) and the user settings it writes = DEFAULT_USER."""
    import argparse

    from offline.cli import add_parser
    from offline.cli.common import train_params

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub, None)
    args = parser.parse_args(["train", "log.jsonl", "--out", "x.npz"])
    assert train_params(args, 64) == TrainParams(dim=64)
