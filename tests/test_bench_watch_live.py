"""``recall bench watch-live``: its offline figure (exact search over the same answers)
and time to target, on made-up answers and scrapes; and a tiny run on the local stack."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from devtools.bench_watch_live import figures, held_from, rss_by_version, settled_since
from devtools.e2e.catalogue import catalogue, item_of, user_cluster
from devtools.e2e.traffic import WARM_CLICKS

N, K, SEED = 2000, 10, 0
NAN = math.nan


def scrape(t: float, probes: float, gauge: float, queries: float = 0.0,
           found: float = 0.0, version: float = 2.0) -> dict[str, float]:
    return {"t": t, "recall_lsh_probes": probes, "recall_lsh_recall": gauge,
            "recall_lsh_recall_low": gauge - 0.01, "recall_lsh_recall_high": gauge + 0.01,
            "recall_lsh_recall_samples": 50.0, "recall_lsh_recall_sample_rate": 20.0,
            "recall_lsh_recall_queries_total": queries, "recall_lsh_recall_found_total": found,
            "recall_index_version": version, "recall_lsh_recall_target": 0.95}


def truth_of(user: int, ids: list[str], vectors: np.ndarray) -> list[str]:
    """The exact top-k a worker should answer: the mean of the user's warm clicks, the
    clicked items left out (brute force over every item)."""
    clicked = [item_of(user_cluster(user, N, SEED), user * 31 + j * 7, N)
               for j in range(WARM_CLICKS)]
    q = vectors[[ids.index(c) for c in clicked]].mean(axis=0)
    order = np.argsort(-(vectors @ (q / np.linalg.norm(q))), kind="stable")
    return [ids[i] for i in order if ids[i] not in clicked][:K]


def answer(items: list[str], source: str = "lsh") -> dict:
    return {"status": "ok", "source": source, "items": [{"item_id": i} for i in items]}


def test_the_offline_figure_is_exact_search_over_the_answers_at_the_final_probes() -> None:
    ids, vectors = catalogue(N, 64, SEED)
    args = argparse.Namespace(items=N, seed=SEED, k=K)
    truths = {u: truth_of(u, ids, vectors) for u in range(40)}
    wrong = [i for i in ids if all(i not in t for t in truths.values())][:K]
    answers = {}
    for u in range(40):
        # before the last probe change: all wrong (must not count)
        answers[len(answers)] = (f"u{u}", 1.0, answer(wrong))
        # after it: right for even users, half right for odd ones
        got = truths[u] if u % 2 == 0 else truths[u][:5] + wrong[:5]
        answers[len(answers)] = (f"u{u}", 3.5, answer(got))
        answers[len(answers)] = (f"u{u}", 4.0, answer(got))  # once per user
    answers[len(answers)] = ("u41", 4.0, answer(wrong, source="popular"))  # not LSH
    scrapes = [scrape(0, 5, NAN), scrape(1, 5, 0.90, 10, 9), scrape(2, 6, NAN, 12, 10.8),
               scrape(3, 6, 0.96, 20, 18.8), scrape(4, 6, 0.97, 40, 38.2)]
    out = figures(args, ids, vectors, answers, scrapes)
    assert out["offline_users"] == 40
    assert out["offline_recall"] == pytest.approx(0.75)
    assert out["offline_low"] < 0.75 < out["offline_high"]
    assert out["settled_from_s"] == 2
    # the worker's counters from the scrape at that time to the end
    assert out["worker_counters_recall"] == pytest.approx((38.2 - 10.8) / (40 - 12))
    assert out["gauge_end"] == 0.97 and out["gauge_minus_offline"] == pytest.approx(0.22)
    assert out["first_at_target_s"] == 3 and out["reached_target_s"] == 3


def test_time_to_target_is_from_when_the_gauge_stayed_at_or_above_it() -> None:
    rows = [scrape(0, 5, 0.96), scrape(1, 5, 0.90), scrape(2, 6, NAN), scrape(3, 6, 0.95),
            scrape(4, 6, 0.97)]
    assert held_from(rows, 0.95) == 3  # NaN (just after a change) neither breaks nor starts
    assert held_from([*rows, scrape(5, 6, 0.94)], 0.95) is None
    assert settled_since(rows) == 2  # the first scrape after the last one at T=5
    assert settled_since(rows[:2]) == 0


def test_the_rss_after_the_catalogue_is_split_by_the_version_served() -> None:
    """A move once the catalogue is in peaks in the window of the version it leaves
    (its new table built beside the served one), not in the run's peak (the merges)."""
    trail = argparse.Namespace(
        samples=[(0.0, 300.0), (1.0, 700.0), (2.0, 640.0), (3.0, 690.04), (3.5, 690.02),
                 (4.0, 650.0), (5.0, 566.0), (6.0, 565.0)],
        states=[(0.5, 900.0, 4.0), (4.5, 1000.0, 5.0)])
    assert rss_by_version(trail, since=2.0) == [  # type: ignore[arg-type]
        {"version": 4.0, "from_s": 2.0, "first_mb": 640.0, "max_mb": 690.0, "max_at_s": 3.0,
         "last_mb": 650.0},
        {"version": 5.0, "from_s": 5.0, "first_mb": 566.0, "max_mb": 566.0, "max_at_s": 5.0,
         "last_mb": 565.0}]


@pytest.mark.integration
def test_bench_watch_live_smoke(capsys: pytest.CaptureFixture[str], monkeypatch,
                                tmp_path) -> None:
    from recall.cli import main

    monkeypatch.delenv("RECALL_METRICS_PORT", raising=False)
    status = main(["bench", "watch-live", "--items", "2000", "--users", "100", "--rate", "30",
                   "--seconds", "4", "--plot", str(tmp_path / "w.png")])
    assert status == 0
    out = json.loads([ln for ln in capsys.readouterr().out.splitlines() if ln.strip()][-1])
    assert out["answers"] == 120
    assert out["answers_by_status_source"] == {"ok/lsh": 120}
    assert out["catalogue_applied_s"] > 0 and out["worker_rss_peak_mb"] > 0
    # the RSS trail: its peak is the kernel's at most, and says where the index stood
    assert 0 < out["rss_sampled_peak_mb"] <= out["worker_rss_peak_mb"] + 1
    assert 0 <= out["rss_sampled_peak_items"] <= 2000 and out["rss_sampled_peak_version"] >= 1
    assert (tmp_path / "w.png").stat().st_size > 0
    assert out["offline_users"] > 0 and 0 <= out["offline_recall"] <= 1
