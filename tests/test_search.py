"""Text → model search: exact, tree filter, save/load, and the DuckDB SQL route."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from bench.index import SearchIndex, load_index, search_models_duckdb, search_models_sql


def clustered(n: int, d: int, n_clusters: int, noise: float, seed: int = 0):
    """Unit vectors around random cluster centres — models of one class sit close together."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True), centres, labels


@pytest.fixture(scope="module")
def data():
    x, centres, labels = clustered(4000, 64, 40, noise=0.8)
    repo_ids = [f"org/m{i:05d}" for i in range(len(x))]
    trees = [f"tree{i % 3}" for i in range(len(x))]
    documented = [i % 5 != 0 for i in range(len(x))]
    return x, centres, repo_ids, trees, documented


def brute_force(x, repo_ids, q, k, keep=None):
    scored = []
    for i, row in enumerate(x):
        if keep is None or keep[i]:
            scored.append((-float(np.dot(row, q) / np.linalg.norm(q)), repo_ids[i]))
    scored.sort()
    return [r for _, r in scored[:k]]


def test_exact_matches_brute_force(data):
    x, _, repo_ids, trees, documented = data
    index = SearchIndex(torch.from_numpy(x * 3.0), repo_ids, trees, documented)  # scale-free
    rng = np.random.default_rng(1)
    for q in rng.standard_normal((5, x.shape[1])).astype(np.float32):
        hits = index.search(q, k=10)
        assert [h.repo_id for h in hits] == brute_force(x, repo_ids, q, 10)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        i = repo_ids.index(hits[0].repo_id)
        assert hits[0].tree_id == trees[i] and hits[0].documented == documented[i]
        assert hits[0].score == pytest.approx(float(x[i] @ q / np.linalg.norm(q)), abs=1e-5)


def test_tree_filter(data):
    x, _, repo_ids, trees, documented = data
    q = np.random.default_rng(2).standard_normal(x.shape[1]).astype(np.float32)
    keep = [t == "tree1" for t in trees]
    index = SearchIndex(x, repo_ids, trees, documented)
    hits = index.search(q, k=10, tree="tree1")
    assert {h.tree_id for h in hits} == {"tree1"}
    assert [h.repo_id for h in hits] == brute_force(x, repo_ids, q, 10, keep)
    assert index.search(q, k=10, tree="no-such-tree") == []


def test_k_larger_than_index_and_no_metadata():
    x, _, _ = clustered(7, 8, 2, 0.5)
    index = SearchIndex(x, [f"r{i}" for i in range(7)])
    hits = index.search(x[3], k=50)
    assert len(hits) == 7 and hits[0].repo_id == "r3"
    assert hits[0].tree_id is None and hits[0].documented is None


def test_bad_inputs_are_rejected(data):
    x, _, repo_ids, _, _ = data
    with pytest.raises(ValueError, match="length"):
        SearchIndex(x, repo_ids[:-1])
    with pytest.raises(ValueError, match="unique"):
        SearchIndex(x[:2], ["a", "a"])
    with pytest.raises(ValueError, match="width"):
        SearchIndex(x, repo_ids).search(np.ones(3), k=1)


def test_save_load_round_trip(tmp_path, data):
    x, _, repo_ids, trees, documented = data
    index = SearchIndex(x, repo_ids, trees, documented)
    path = tmp_path / "index.safetensors"
    index.save(path)
    loaded = load_index(path)
    assert type(loaded) is SearchIndex and len(loaded) == len(index)
    q = x[17] + 0.1
    assert loaded.search(q, 10) == index.search(q, 10)
    assert loaded.search(q, 10, tree="tree2") == index.search(q, 10, tree="tree2")


def test_sql_ranking_matches_numpy(data):
    x, _, repo_ids, trees, documented = data
    x, repo_ids, trees, documented = x[:300], repo_ids[:300], trees[:300], documented[:300]
    rng = np.random.default_rng(5)
    scales = rng.uniform(5, 15, len(x)).astype(np.float32)
    offsets = rng.uniform(0, 3, len(x)).astype(np.float32)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE embeddings (repo_id VARCHAR, tree_id VARCHAR, encoder VARCHAR,"
        " embedding FLOAT[], logit_scale DOUBLE, vocab_lse DOUBLE, unknown_mass DOUBLE,"
        " documented BOOLEAN)"
    )
    rows = [
        (r, t, "enc-a", v.tolist(), float(s), float(o), None, d)
        for r, t, v, s, o, d in zip(repo_ids, trees, x, scales, offsets, documented, strict=True)
    ]
    rows.append(("other/enc", "tree0", "enc-b", x[0].tolist(), 1.0, 0.0, None, True))  # excluded
    con.executemany("INSERT INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    assert "list_cosine_similarity" in search_models_sql()

    index = SearchIndex(x, repo_ids, trees, documented, scales, offsets)
    plain = SearchIndex(x, repo_ids, trees, documented)
    q0 = x[5] / np.linalg.norm(x[5])
    assert plain.search(q0, 1)[0].score == pytest.approx(1.0, abs=1e-5)  # plain cosine
    q = x[5] + np.random.default_rng(4).standard_normal(x.shape[1]).astype(np.float32) * 0.05
    for tree in (None, "tree0"):
        sql_hits = search_models_duckdb(con, q, "enc-a", k=10, tree=tree)
        np_hits = index.search(q, k=10, tree=tree)
        assert [h.repo_id for h in sql_hits] == [h.repo_id for h in np_hits]
        assert [h.documented for h in sql_hits] == [h.documented for h in np_hits]
        log_odds = np.array([h.score for h in np_hits])
        log_prob = -np.logaddexp(0, -log_odds)  # log σ: SQL's score, the same order
        assert np.allclose([h.score for h in sql_hits], log_prob, atol=1e-5)


def test_calibration_reorders_and_round_trips(tmp_path, data):
    """A model whose expert is confident about everything (a large offset) drops below one
    that prefers this text to what it knows; the calibration is saved with the index."""
    x, _, repo_ids, trees, _ = data
    q = x[0]
    cos = SearchIndex(x, repo_ids, trees).search(q, 2)
    first, second = (repo_ids.index(h.repo_id) for h in cos)
    offsets = np.zeros(len(x), dtype=np.float32)
    offsets[first] = 5.0
    index = SearchIndex(x, repo_ids, trees, scales=np.full(len(x), 10.0), offsets=offsets)
    hits = index.search(q, 2)
    assert hits[0].repo_id == repo_ids[second]
    assert hits[0].score == pytest.approx(10 * cos[1].score, rel=1e-5)
    index.save(tmp_path / "calibrated.safetensors")
    assert load_index(tmp_path / "calibrated.safetensors").search(q, 2) == hits
    with pytest.raises(ValueError, match="calibration values"):
        SearchIndex(x, repo_ids, trees, scales=np.ones(3))


def test_bench_table_and_data_build_at_any_size(data):
    """`probex bench search` loads its DuckDB table from a pyarrow view and builds its data
    in chunks; both give what the plain routes give."""
    from bench import search as bench_search

    x, centres, repo_ids, trees, _ = data
    x, repo_ids, trees = x[:500], repo_ids[:500], trees[:500]
    con = duckdb.connect(config={"threads": 1})
    assert bench_search._load_embeddings(con, repo_ids, trees, x).startswith("pyarrow")
    index = SearchIndex(x, repo_ids, trees)
    for q in centres[:3]:
        sql_ids = [h.repo_id for h in search_models_duckdb(con, q, "bench", 10)]
        assert sql_ids == [h.repo_id for h in index.search(q, 10)]
    chunked, c1 = bench_search._synthetic(300, 15, chunk=64)
    whole, c2 = bench_search._synthetic(300, 15, chunk=300)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(chunked, whole, atol=1e-7)
    assert chunked.dtype == np.float32
