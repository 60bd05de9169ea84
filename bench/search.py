"""`probex bench search`: text → model search latency over synthetic stored embeddings.

Stored embeddings are clustered unit vectors (models of one class sit together in the
weight-language space) with D = 384, the MiniLM width; queries are noisy cluster centres,
like a class text landing near its models. One run measures two sizes, N = 10^5 and 10^6
(10^4 and 10^5 with --quick), each built, timed and freed before the next, and prints per
size and method the ms per query, the ratio to exact, and recall@10 against the exact top-10:
- exact: one normalised matmul + argpartition (`SearchIndex`);
- faiss (a well-kept vector library): exact, IVF (≈√N lists, trained on a sample of
  256 rows per list, a few probe counts) and HNSW — the approximate indexes probex would use
  past what a scan serves. HNSW is skipped at a size when its build, extrapolated from the
  previous size as N log N, would exceed a budget (3 minutes on one thread; 2 s with --quick);
- the DuckDB SQL scan (`SEARCH_MODELS_SQL` over a table of FLOAT[] lists — the index
  `probex search` uses), with recall@10 measured over every query;
- a Python loop of per-row numpy dot products, on a few queries only (2 from 10^6 on).
The DuckDB table is loaded from a pyarrow FixedSizeList view of the float32 matrix; build
times and peak RSS are printed.
The run closes with the target line, then which index probex uses and the size past which
an approximate index pays: where the scan, linear in N, passes 100 ms per query.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from bench.index import SearchIndex, search_models_duckdb

DIM = 384
K = 10
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
HNSW_BUDGET_S = 180.0  # skip HNSW at a size whose extrapolated build exceeds this
QUICK_HNSW_BUDGET_S = 2.0
INTERACTIVE_MS = 100.0  # a search answered within this feels immediate at the CLI
IVF_TRAIN_PER_LIST = 256  # k-means training rows per IVF list (faiss's own cap; 64 cost
# 0.05-0.18 recall@10 at 10^5)


def _synthetic(
    n: int, n_clusters: int, seed: int = 0, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """(n, DIM) float32 unit rows around n_clusters centres; built in row chunks so the
    peak is the output plus one chunk (the random stream is the same as in one draw)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = np.empty((n, DIM), dtype=np.float32)
    noise_scale = np.float32(1.2 / np.sqrt(DIM))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = centres[labels[lo:hi]] + noise_scale * rng.standard_normal((hi - lo, DIM)).astype(
            np.float32
        )
        x[lo:hi] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return x, centres


def _per_query_ms(
    fn: Callable[[np.ndarray], object], queries: np.ndarray, warm: bool = True
) -> tuple[float, list]:
    """Mean ms per query over `queries`, and each query's answer."""
    if warm:
        fn(queries[0])  # warm caches and lazy setup
    t = time.perf_counter()
    out = [fn(q) for q in queries]
    return 1000 * (time.perf_counter() - t) / len(queries), out


def _recall(truth: list[set[str]], found: list[list[str]]) -> float:
    """Mean recall@K of `found` (one id list per query, in query order) against `truth`."""
    return float(np.mean([len(truth[i] & set(f[:K])) / K for i, f in enumerate(found)]))


def _python_loop(x: np.ndarray, repo_ids: list[str], q: np.ndarray) -> list[str]:
    q = q / np.linalg.norm(q)
    scores = [float(np.dot(row, q)) for row in x]
    return [repo_ids[i] for i in sorted(range(len(scores)), key=scores.__getitem__)[-K:][::-1]]


def _peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak / 1e6  # bytes on macOS, else KiB


def run(quick: bool = False) -> dict:
    """Print one latency/recall table per size; return the numbers printed.

    The top-level keys are the first (smaller) size's numbers, as before; `"sizes"` maps
    every measured N to its own dict of the same keys.

    Every method runs on one thread (BLAS limited via threadpoolctl, DuckDB `threads=1`): on
    a shared 2-core machine multithreaded BLAS timings swing 4× with the neighbours' load,
    and one thread is also the fair comparison with the inherently serial Python loop.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _run(quick)


def _run(quick: bool) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    n_queries = 20 if quick else 50
    n_loop = 3 if quick else 5  # the Python loop costs ~n µs per query
    budget = QUICK_HNSW_BUDGET_S if quick else HNSW_BUDGET_S
    per_size: dict[int, dict] = {}
    hnsw_prev: tuple[int, float] | None = None  # (N, build s) of the last HNSW built
    for n in sizes:
        res = _run_size(n, n_queries, n_loop if n <= 100_000 else 2, budget, hnsw_prev)
        if res["build_faiss_hnsw_s"] is not None:
            hnsw_prev = (n, res["build_faiss_hnsw_s"])
        per_size[n] = res
        gc.collect()  # this size's matrix, indexes and DuckDB table are gone before the next
    _print_verdict(per_size)
    results = dict(per_size[sizes[0]])
    results["sizes"] = per_size
    return results


def _run_size(
    n: int,
    n_queries: int,
    n_loop: int,
    hnsw_budget_s: float,
    hnsw_prev: tuple[int, float] | None,
) -> dict:
    t = time.perf_counter()
    x, centres = _synthetic(n, n_clusters=n // 20)
    rng = np.random.default_rng(1)
    queries = centres[rng.integers(0, len(centres), n_queries)]
    queries = queries + np.float32(0.3 / np.sqrt(DIM)) * rng.standard_normal(queries.shape).astype(
        np.float32
    )
    del centres
    repo_ids = [f"bench/model_{i:06d}" for i in range(n)]
    trees = [f"tree{i % 8}" for i in range(n)]
    build_data = time.perf_counter() - t

    t = time.perf_counter()
    exact = SearchIndex(x, repo_ids, trees)
    build_exact = time.perf_counter() - t
    results: dict = {"n": n, "dim": DIM, "k": K, "queries": n_queries}
    results["build_data_s"], results["build_exact_s"] = build_data, build_exact

    rows: list[tuple[str, float, int, float | None]] = []  # name, ms, queries timed, recall
    exact_ms, exact_out = _per_query_ms(partial(exact.search, k=K), queries)
    truth_lists = [[h.repo_id for h in hits] for hits in exact_out]
    truth = [set(ids) for ids in truth_lists]
    rows.append(("exact matmul + argpartition", exact_ms, n_queries, 1.0))
    results["exact_ms"] = exact_ms
    tree_ms, _ = _per_query_ms(partial(exact.search, k=K, tree="tree3"), queries)
    tree_row = ("exact, one tree (1/8 of rows)", tree_ms, n_queries, 1.0)
    results["exact_tree_ms"] = tree_ms
    del exact
    gc.collect()

    # the index probex uses: the catalog's SQL over FLOAT[] lists, on every query
    sql_rows, sql_ms, sql_rec, sql_same = _duckdb_rows(x, repo_ids, trees, queries, truth_lists)
    results.update(sql_rows)
    sql_row = ("brute force: DuckDB SQL scan", sql_ms, n_queries, sql_rec)

    rows.extend(_faiss_rows(x, repo_ids, queries, truth, results, hnsw_budget_s, hnsw_prev))
    rows.append(tree_row)
    rows.append(sql_row)
    loop_ms, loop_out = _per_query_ms(
        partial(_python_loop, x, repo_ids), queries[:n_loop], warm=False
    )
    loop_rec = _recall(truth, loop_out)
    rows.append(("brute force: Python per-row loop", loop_ms, n_loop, loop_rec))
    results["python_loop_ms"], results["python_loop_recall@10"] = loop_ms, loop_rec
    results["python_loop_queries"] = n_loop
    del x
    results["peak_rss_gb"] = _peak_rss_gb()

    print(
        f"search over {n:,} synthetic stored embeddings, D={DIM}, top-{K}, {n_queries} queries, 1 thread"
    )
    hnsw_s = (
        f"{results['build_faiss_hnsw_s']:.2f}s"
        if results["build_faiss_hnsw_s"] is not None
        else "skipped"
    )
    rss = results["peak_rss_gb"]
    print(
        f"built in: data {build_data:.2f}s; exact {build_exact:.2f}s;"
        f" DuckDB table ({results['duckdb_load']}) {results['build_duckdb_s']:.2f}s;"
        f" faiss exact {results['build_faiss_flat_s']:.2f}s,"
        f" IVF ({results['n_lists']} lists, trained on {results['ivf_train_rows']:,} rows)"
        f" {results['build_faiss_ivf_s']:.2f}s, HNSW {hnsw_s}"
        + (f"; peak RSS so far {rss:.2f} GB" if rss is not None else "")
    )
    print(
        f"{'method':36s} {'ms/query':>10s} {'vs exact':>9s} {'vs loop':>9s} {'queries':>8s}"
        f" {'recall@10':>10s}"
    )
    for name, ms, nq, rec in rows:
        rec_s = f"{rec:10.3f}" if rec is not None else f"{'-':>10s}"
        print(f"{name:36s} {ms:10.3f} {ms / exact_ms:8.2f}x {ms / loop_ms:8.4f}x {nq:8d} {rec_s}")
    if results["hnsw_skipped"]:
        print(f"  HNSW skipped at {n:,}: {results['hnsw_skipped']}")
    if n_loop < n_queries:
        print(
            f"  Python loop timed on {n_loop} of the {n_queries} queries"
            f" ({1000 * loop_ms / n:.2f} µs per row)"
        )
    print(
        f"SQL top-{K} == exact top-{K}: {sql_same == n_queries}"
        f" ({sql_same}/{n_queries} queries, same ids in the same order; recall@{K} {sql_rec:.3f})"
    )
    results["sql_agrees_with_exact"] = sql_same == n_queries
    results["table"] = rows
    return results


def _duckdb_rows(
    x: np.ndarray,
    repo_ids: list[str],
    trees: list[str],
    queries: np.ndarray,
    truth: list[list[str]],
) -> tuple[dict, float, float, int]:
    """Build the `embeddings` table, time `SEARCH_MODELS_SQL` on every query, and close it."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    try:
        con.execute("SET enable_progress_bar = false")
        t = time.perf_counter()
        load = _load_embeddings(con, repo_ids, trees, x)
        build = time.perf_counter() - t
        ms, out = _per_query_ms(lambda q: search_models_duckdb(con, q, "bench", K), queries)
    finally:
        con.close()
    found = [[h.repo_id for h in hits] for hits in out]
    rec = _recall([set(ids) for ids in truth], found)
    same = sum(f == e for f, e in zip(found, truth, strict=True))
    res = {"build_duckdb_s": build, "duckdb_load": load, "duckdb_sql_ms": ms}
    res["duckdb_sql_recall@10"], res["duckdb_sql_queries"] = rec, len(queries)
    return res, ms, rec, same


def _load_embeddings(con, repo_ids: list[str], trees: list[str], x: np.ndarray) -> str:
    """Create the `embeddings` table (the catalog view's columns, FLOAT[] embeddings) from a
    zero-copy pyarrow FixedSizeList view of the float32 matrix (a pandas frame of per-row
    arrays took ~4x longer at 10^6)."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    emb = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    frame = pa.table({"repo_id": repo_ids, "tree_id": trees, "embedding": emb})
    load = "pyarrow FixedSizeList"
    con.register("frame", frame)
    con.execute(
        "CREATE TABLE embeddings AS SELECT repo_id, tree_id, 'bench' AS encoder,"
        " embedding::FLOAT[] AS embedding, 1.0 AS logit_scale, 0.0 AS vocab_lse,"
        " 1.0 AS unknown_mass, true AS documented FROM frame"
    )
    con.unregister("frame")
    return load


def _faiss_rows(
    x: np.ndarray,
    repo_ids: list[str],
    queries: np.ndarray,
    truth: list[set[str]],
    results: dict,
    hnsw_budget_s: float,
    hnsw_prev: tuple[int, float] | None,
) -> list[tuple[str, float, int, float | None]]:
    """The same searches on faiss (a well-kept vector library): exact inner product, IVF
    (≈√N lists, a few probe counts) and HNSW; recall against our exact index's top-k.
    Each index is freed once measured."""
    import faiss

    faiss.omp_set_num_threads(1)
    x = np.ascontiguousarray(x, dtype=np.float32)  # faiss stores float32
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows: list[tuple[str, float, int, float | None]] = []

    def measure(name: str, index, key: str) -> None:
        ms, out = _per_query_ms(lambda q: index.search(q[None, :], K)[1][0], queries)
        rec = _recall(truth, [[repo_ids[i] for i in found if i >= 0] for found in out])
        rows.append((name, ms, len(queries), rec))
        results[f"{key}_ms"], results[f"{key}_recall@10"] = ms, rec

    n = len(x)
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    results["build_faiss_flat_s"] = time.perf_counter() - t
    measure("faiss exact (IndexFlatIP)", flat, "faiss_flat")
    del flat

    t = time.perf_counter()
    n_lists = results["n_lists"] = max(1, round(n**0.5))
    n_train = min(n, IVF_TRAIN_PER_LIST * n_lists)
    sample = np.random.default_rng(2).choice(n, n_train, replace=False) if n_train < n else None
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, n_lists, faiss.METRIC_INNER_PRODUCT)
    index.train(x if sample is None else x[np.sort(sample)])
    index.add(x)
    results["build_faiss_ivf_s"] = time.perf_counter() - t
    results["ivf_train_rows"] = n_train
    base = max(8, n_lists // 10)
    for n_probe in sorted({4, base, 2 * base, 4 * base}):
        index.nprobe = n_probe
        measure(f"faiss IVF n_probe={n_probe}", index, f"faiss_ivf_probe{n_probe}")
    del index

    results["build_faiss_hnsw_s"], results["hnsw_skipped"] = None, None
    if hnsw_prev is not None:  # HNSW builds in ~N log N: extrapolate from the last size
        n0, s0 = hnsw_prev
        estimate = s0 * (n / n0) * math.log(n) / math.log(n0)
        if estimate > hnsw_budget_s:
            results["hnsw_skipped"] = (
                f"its build extrapolates (N log N from {s0:.1f}s at {n0:,}) to"
                f" >= {estimate:.0f}s on one thread, over the {hnsw_budget_s:.0f}s budget"
            )
            return rows
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(x)
    results["build_faiss_hnsw_s"] = time.perf_counter() - t
    for ef in (64, 256):
        hnsw.hnsw.efSearch = ef
        measure(f"faiss HNSW M=32 efSearch={ef}", hnsw, f"faiss_hnsw_ef{ef}")
    return rows


def _print_verdict(per_size: dict[int, dict]) -> None:
    """The target line, and which index probex uses and where an approximate one pays."""
    print(
        "target: exact well under both brute-force baselines; an approximate index with"
        " recall@10 >= 0.9 well under exact"
    )
    big = max(per_size)
    sql = {n: r["duckdb_sql_ms"] for n, r in per_size.items()}
    per_row_us = 1000 * sql[big] / big  # the scan is linear in N
    crossover = _round2(INTERACTIVE_MS * 1000 / per_row_us)
    recalls = ", ".join(f"{r['duckdb_sql_recall@10']:.3f}" for r in per_size.values())
    print(
        "probex uses: the DuckDB SQL scan (sql/search_models.sql over FLOAT[] lists), exact:"
        f" recall@10 {recalls}; "
        + ", ".join(f"{ms:.1f} ms/query at {n:,}" for n, ms in sql.items())
        + f" ({per_row_us:.2f} µs per embedding)"
    )
    approx = [
        (ms, name, rec)
        for name, ms, _, rec in per_size[big]["table"]
        if name.startswith(("faiss IVF", "faiss HNSW")) and rec is not None and rec >= 0.9
    ]
    best = ""
    if approx:
        ms, name, rec = min(approx)
        best = (
            f"; at {big:,}, {name} answers in {ms:.2f} ms/query with recall@10 {rec:.3f}"
            f" ({sql[big] / ms:.0f}x under the scan)"
        )
    print(
        f"an approximate index pays past ~{crossover:,} embeddings, where the scan passes"
        f" {INTERACTIVE_MS:.0f} ms per query{best}"
    )


def _round2(v: float) -> int:
    """v to two significant digits."""
    if v <= 0:
        return 0
    digits = 2 - int(math.floor(math.log10(v))) - 1
    return int(round(v, digits))
