"""Smoke test of ``recall bench index`` run in-process (small; no timed assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recall.cli import main
from recall.tuner import suggested_params

EXPECTED = {
    "bench", "items", "dim", "queries", "k", "params", "exact_ms_p50", "exact_ms_p99",
    "lsh_recall", "lsh_ms_p50", "lsh_ms_p99", "lsh_candidates", "speedup_p50",
    "build_seconds", "build_items_per_s", "insert_items_per_s",
    "insert_single_items_per_s", "insert_batch_items_per_s", "index_nbytes",
    "index_rss_mb", "peak_rss_mb", "hnsw_recall", "hnsw_ms_p50", "hnsw_ms_p99", "hnsw_ef",
}


def last_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    return json.loads(lines[-1])


def test_bench_index_prints_one_final_json_line(capsys):
    assert main(["bench", "index", "--items", "3000", "--queries", "50", "--no-hnsw",
                 "--no-tune"]) == 0
    out = capsys.readouterr().out
    res = last_json(out)
    assert set(res) >= EXPECTED
    assert res["bench"] == "index" and res["items"] == 3000 and res["queries"] == 50
    assert res["hnsw_recall"] is None
    assert 0.5 <= res["lsh_recall"] <= 1.0
    assert 0 < res["lsh_candidates"] < 3000
    assert res["index_stats"]["items"] == 3000
    assert sum(line.lstrip().startswith("{") for line in out.splitlines()) == 1
    assert "tuned" not in res and "default_recall" not in res  # --no-tune: the default only


def test_by_default_the_bench_reports_the_products_own_layout_and_the_default(capsys):
    """What users get: the layout the tuner picks by itself on this catalogue (tuned on
    its own sample and queries) as the headline, the default layout beside it, each
    against hnswlib at its own recall on the same queries, the ratio with an interval."""
    assert main(["bench", "index", "--items", "4000", "--dim", "16", "--queries", "60",
                 "--tune-items", "2000"]) == 0
    res = last_json(capsys.readouterr().out)
    assert res["tuned"]["sample_items"] == 2000 and res["tuned"]["judged_items"] == 4000
    assert res["tuned"]["within_budget"]
    # the budget held (bulk-built, as judged; the bench's index also holds inserted items)
    assert res["tuned"]["index_mib"] <= res["tuned"]["budget_mib"]
    for name, lsh in (("", "lsh_"), ("default_", "default_")):
        low, high = res[f"{name}ratio_p50_ci"]
        assert low <= res[f"{name}ratio_p50"] <= high
        assert res[f"{name}hnsw_recall"] >= res[f"{lsh}recall"] or res[f"{name}hnsw_ef"] == 512
    assert res["default_params"]["k"] == suggested_params(4000, 16).k


def test_bench_index_with_params_hnsw_and_plot(tmp_path, capsys):
    plot = tmp_path / "index.png"
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"params": {"family": "simhash", "k": 8, "L": 8, "T": 4}}))
    code = main(["bench", "index", "--items", "2000", "--dim", "16", "--queries", "30",
                 "--params", str(params), "--plot", str(plot), "--probes", "1,4"])
    assert code == 0
    res = last_json(capsys.readouterr().out)
    assert res["params"]["family"] == "simhash" and res["params"]["dim"] == 16
    assert res["hnsw_recall"] is not None and res["hnsw_ef"] >= 10
    assert [s["T"] for s in res["sweep"]] == [1, 4]
    # the two indexes also timed in alternating passes: a ratio and its spread
    low, high = res["alternated_ratio_range"]
    assert res["alternated_rounds"] >= 3 and low <= res["alternated_ratio_p50"] <= high
    # no internal field (raw per-query latencies) leaks into the one JSON line
    assert not [key for point in res["sweep"] for key in point if key.startswith("_")]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--items", "1"],
        ["--items", "100", "--k", "200"],
        ["--items", "100", "--params", '{"k": 0}'],
        ["--items", "100", "--params", '{"dim": 8}'],
        ["--items", "100", "--params", "/nonexistent.json"],
        ["--items", "100", "--probes", "0,2"],
        ["--items", "100", "--inserts", "100"],
    ],
)
def test_bench_index_rejects_bad_input(argv, capsys):
    assert main(["bench", "index", *argv]) == 2
    assert "error" in capsys.readouterr().err



class _GraphNeedingEf:
    """A stand-in for an hnswlib index (unit test): query i finds its true top-k only
    from ``need[i]`` up, else nothing of it."""

    def __init__(self, truth, need):
        self.truth, self.need, self.ef = truth, need, 0
        self.rows = {row.tobytes(): i for i, row in enumerate(_QUERIES)}

    def set_ef(self, ef):
        self.ef = ef

    def knn_query(self, q, k, num_threads=1):
        i = self.rows[q.tobytes()]
        labels = self.truth[i] if self.ef >= self.need[i] else -1 - np.arange(k)
        return np.asarray([labels]), None


#: 1,000 distinct query rows
_QUERIES = np.eye(1000, 8, dtype=np.float32) + np.arange(1000, dtype=np.float32)[:, None]


def test_the_hnswlib_reference_reaches_the_lsh_recall_on_all_the_timed_queries():
    """The ratio users read (LSH p50 / hnswlib p50) means something only at matching
    recall: the reference's ef must reach the LSH's recall on the queries it is timed on,
    not on some of them (here the first 300 need ef 10, the rest ef 48)."""
    from devtools.bench_index import _hnsw_at_recall

    truth = np.arange(10_000).reshape(1000, 10)
    need = np.where(np.arange(1000) < 300, 10, 48)
    ef, ref, curve = _hnsw_at_recall(_GraphNeedingEf(truth, need), _QUERIES, truth, 10, 0.95)
    assert ef == 48 and ref["recall"] == 1.0
    assert [pt["ef"] for pt in curve] == [10, 16, 24, 32, 48]
