"""`probex bench scale`: what the per-tree work costs, and what a second worker buys.

One run, on the default zoo (`--quick`: the tiny zoo, generated into a temp dir):
- each stage timed in this process on one torch thread, per model: crawl (headers, cards,
  configs), tree recovery, layer extraction, expert training (every tree's, with the
  pipeline's default training settings) and prediction;
- bytes read from the hub per stage, counted at the one place a directory hub opens a file:
  per model, and for extraction against the bytes of the tensors it asked for (target
  <= 1.1: a layer is read by seeking to its tensors, nothing else of the file);
- at two sizes the zoo does not reach, 10^3 and 10^4 models (quick: 10^2 and 10^3): the
  crawl of a synthetic hub (ViT-B-sized headers) and tree recovery of synthetic forests;
  the catalog's Parquet bytes per model as built and tiled to 10^4 models (quick: 10^3);
- the per-tree phase (every tree's layers, then experts, through Dagster: what `probex run
  --dask` runs) on a Dask LocalCluster of one worker, then of two (one thread each), and
  the ratio of their wall times.

The home is a scratch one in a temp dir; the user's home is only read for its default zoo
(generated there if missing, as `probex run` would). docs/scale.md builds its cost model of
a 10^6-model hub from these numbers.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TARGET_READ_RATIO = 1.1


@dataclass
class _Counter:
    """Bytes read through `DirectorySource._open`, and tensor bytes asked of `read_tensors`."""

    read: int = 0
    tensors: int = 0
    files: int = 0

    def take(self) -> tuple[int, int, int]:
        out = (self.read, self.tensors, self.files)
        self.read = self.tensors = self.files = 0
        return out


class _CountingFile:
    def __init__(self, f, counter: _Counter) -> None:
        self._f, self._counter = f, counter

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._counter.read += len(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@contextmanager
def _counting(counter: _Counter):
    """Count every byte a directory hub (local or HF cache) reads, in this process."""
    from probex_core.hub.local import DirectorySource

    open_, read_tensors = DirectorySource._open, DirectorySource.read_tensors

    def counted_open(self, path):
        counter.files += 1
        return _CountingFile(open_(self, path), counter)

    def counted_read_tensors(self, record, names):
        counter.tensors += sum(record.tensors[n].end - record.tensors[n].start for n in names)
        return read_tensors(self, record, names)

    DirectorySource._open, DirectorySource.read_tensors = counted_open, counted_read_tensors
    try:
        yield counter
    finally:
        DirectorySource._open, DirectorySource.read_tensors = open_, read_tensors


def _hub(quick: bool, scratch: Path) -> str:
    if quick:
        from probex_core.zoo import generate_zoo

        generate_zoo(preset="tiny", out=scratch / "zoo", seed=0, progress=False)
        return str(scratch / "zoo" / "hub")
    from orchestration.runner import ensure_default_hub
    from probex_core.catalog import Home

    return str(ensure_default_hub(Home.from_env(), "default"))


def run(quick: bool = False) -> dict:
    """Print the per-stage table and the one-against-two-workers ratio; return the numbers."""
    import torch

    torch.set_num_threads(1)  # as a Dask worker runs: one thread per worker
    with tempfile.TemporaryDirectory(prefix="probex-bench-scale-") as tmp:
        return _run(quick, Path(tmp))


def _run(quick: bool, scratch: Path) -> dict:
    from assets.experts import ExpertTraining
    from assets.partitions import register_trees
    from orchestration.runner import instance_for, tree_names
    from probex_core import pipeline
    from probex_core.catalog import Home
    from probex_core.hub import make_source
    from probex_core.pipeline.layers import tree_members

    hub = _hub(quick, scratch)
    home = Home(scratch / "home")
    settings = ExpertTraining().settings()
    stages: dict[str, dict] = {}
    counter = _Counter()

    def stage(name: str, n_models: int, seconds: float) -> None:
        read, tensors, files = counter.take()
        stages[name] = {
            "models": n_models,
            "seconds": seconds,
            "s_per_model": seconds / max(n_models, 1),
            "bytes_read": read,
            "bytes_per_model": read / max(n_models, 1),
            "files_opened": files,
            "tensor_bytes": tensors,
            "read_ratio": read / tensors if tensors else None,
        }

    with _counting(counter):
        source = make_source(hub)
        t = time.perf_counter()
        pipeline.crawl(home, source)
        n = len(pipeline.load_records(home))
        stage("crawl", n, time.perf_counter() - t)
        t = time.perf_counter()
        pipeline.recover(home, source)
        stage("tree recovery", n, time.perf_counter() - t)
        trees = sorted(pipeline.stale_trees(home).wanted)
        register_trees(instance_for(home), trees)
        members = 0
        t = time.perf_counter()
        for tree in trees:
            pipeline.extract_layers(home, source, tree)
            members += len(tree_members(home, tree))
        stage("layer extraction", members, time.perf_counter() - t)
        t = time.perf_counter()
        for tree in trees:
            pipeline.train_experts(home, tree, settings)
        stage("expert training", members, time.perf_counter() - t)
        t = time.perf_counter()
        pipeline.predict(home)
        stage("prediction", n, time.perf_counter() - t)
    catalog = _catalog_sizes(home, scratch, target=1_000 if quick else 10_000)
    crawl_sizes = (100, 1_000) if quick else (1_000, 10_000)
    synthetic = {m: _synthetic_crawl(scratch / f"synthetic-{m}", m) for m in crawl_sizes}
    recovery = {m: _synthetic_recovery(m) for m in crawl_sizes}
    per_tree = {w: _per_tree_phase(home, hub, trees, tree_names(home), w) for w in (1, 2)}
    results = {
        "hub": hub,
        "models": n,
        "trees": len(trees),
        "stages": stages,
        "per_tree_seconds": per_tree,
        "speedup_2_workers": per_tree[1] / per_tree[2],
        "catalog": catalog,
        "synthetic_crawl": synthetic,
        "synthetic_recovery": recovery,
    }
    _print(results, quick)
    return results


def _synthetic_crawl(root: Path, n: int, n_tensors: int = 150) -> dict:
    """Crawl a synthetic hub of `n` repos (a card, a config and a safetensors file whose
    header names `n_tensors` tensors, about a ViT-B's header; the tensors themselves tiny):
    crawl seconds and bytes read per model, at hub sizes the zoo does not reach."""
    import torch
    from safetensors.torch import save_file

    from probex_core import pipeline
    from probex_core.catalog import Home
    from probex_core.hub import LocalHubSource

    tensors = {
        f"blocks.{j // 12}.param_{j % 12}.weight": torch.zeros(4, 4) for j in range(n_tensors)
    }
    for i in range(n):
        repo = root / "hub" / f"synth-{i // 1000:03d}" / f"model-{i:06d}"
        repo.mkdir(parents=True)
        save_file(tensors, str(repo / "model.safetensors"), metadata={"format": "pt"})
        (repo / "config.json").write_text('{"architectures": ["SynthModel"]}')
        (repo / "README.md").write_text(f"---\nlicense: mit\n---\n# model {i}\n")
    counter = _Counter()
    with _counting(counter):
        t = time.perf_counter()
        pipeline.crawl(Home(root / "home"), LocalHubSource(root / "hub"))
        seconds = time.perf_counter() - t
    read, _, files = counter.take()
    return {"models": n, "seconds": seconds, "s_per_model": seconds / n,
            "bytes_per_model": read / n, "files_per_model": files / n}  # fmt: skip


def _synthetic_recovery(n: int) -> dict:
    """Tree recovery from weights alone on `n` synthetic models (`bench trees`' forests:
    trees of 1 + 9 + 90 models, two signatures, two 64 x 64 layers): seconds per model.
    Distances are pairwise within a signature group, so this grows with the group's size."""
    from collections import Counter

    import torch

    from bench.trees import ForestSpec, score_recovery, synthetic_forest
    from probex_core.trees import TreeConfig, recover_trees

    shapes = (((64, 64), (32, 64)), ((64, 64), (64, 64)))
    specs = [ForestSpec((9, 10), layer_shapes=shapes[t % 2]) for t in range(max(1, n // 100))]
    records, truth = synthetic_forest(specs, seed=0, documented=0.8)
    torch.set_num_threads(1)
    t = time.perf_counter()
    recovery = recover_trees(records, TreeConfig())
    seconds = time.perf_counter() - t
    scores = score_recovery(recovery, truth)
    return {"models": len(records), "seconds": seconds, "s_per_model": seconds / len(records),
            "largest_group": max(Counter(r.signature for r in records).values()),
            "ari": scores.ari,
            "edge_accuracy": scores.edge_accuracy}  # fmt: skip


def _catalog_sizes(home, scratch: Path, target: int) -> dict:
    """The catalog's Parquet bytes per model as built, then with every table's rows tiled
    (repo and tree ids made unique per copy) up to `target` models: bytes per model and one
    query's time through the views at both sizes."""
    import math

    import pandas as pd

    from probex_core.catalog import Home, query, read_table, refresh_views, write_table
    from probex_core.schemas import TABLES

    refresh_views(home)
    n = len(read_table(home, "repos"))
    copies = math.ceil(target / n)
    big = Home(scratch / "tiled")
    for table in TABLES:
        if not home.table_dir(table).is_dir():
            continue
        df = read_table(home, table)
        parts = []
        for k in range(copies):
            part = df.copy()
            for column in ("repo_id", "tree_id"):
                if column in part:
                    part[column] = part[column].astype(str) + f"~{k}"
            parts.append(part)
        write_table(big, table, pd.concat(parts, ignore_index=True))
    refresh_views(big)
    out = {}
    for h, models in ((home, n), (big, n * copies)):
        size = sum(p.stat().st_size for p in h.tables.rglob("*.parquet"))
        t = time.perf_counter()
        query(h, "SELECT tree_id, count(*) FROM predictions GROUP BY tree_id")
        out[models] = {"bytes_per_model": size / models, "bytes": size,
                       "query_ms": 1000 * (time.perf_counter() - t)}  # fmt: skip
    return out


def _per_tree_phase(home, hub: str, trees: list[str], names: dict, workers: int) -> float:
    """Every tree's partition on a LocalCluster of `workers` processes; wall seconds."""
    import contextlib
    import io

    from orchestration.dask_run import build_trees_on_dask, local_cluster

    with local_cluster(workers) as cluster:
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            build_trees_on_dask(home, hub, trees, None, cluster.scheduler_address, names)
        return time.perf_counter() - t


def _print(r: dict, quick: bool) -> None:
    print(
        f"{'tiny' if quick else 'default'} zoo: {r['models']:,} models, {r['trees']} trees"
        f" ({r['hub']}); stages in one process, one torch thread"
    )
    print(
        f"{'stage':18s} {'models':>7s} {'s':>8s} {'ms/model':>9s} {'files':>7s}"
        f" {'read/model':>11s} {'read/tensor':>12s}"
    )
    for name, s in r["stages"].items():
        ratio = f"{s['read_ratio']:12.3f}" if s["read_ratio"] is not None else f"{'-':>12s}"
        print(
            f"{name:18s} {s['models']:7,d} {s['seconds']:8.1f} {1000 * s['s_per_model']:9.2f}"
            f" {s['files_opened']:7,d} {_bytes(s['bytes_per_model']):>11s} {ratio}"
        )
    for m, c in r["synthetic_crawl"].items():
        print(
            f"synthetic hub of {m:,} repos (150-tensor headers): crawl"
            f" {1000 * c['s_per_model']:.2f} ms/model, {_bytes(c['bytes_per_model'])}/model read,"
            f" {c['files_per_model']:.1f} files opened/model"
        )
    for c in r["synthetic_recovery"].values():
        print(
            f"tree recovery of {c['models']:,} synthetic models (groups of {c['largest_group']:,}):"
            f" {c['seconds']:.1f}s, {1000 * c['s_per_model']:.2f} ms/model,"
            f" ARI {c['ari']:.3f}, edge accuracy {c['edge_accuracy']:.3f}"
        )
    for m, c in r["catalog"].items():
        print(
            f"catalog at {m:,} models: {_bytes(c['bytes'])} of Parquet,"
            f" {_bytes(c['bytes_per_model'])}/model; predictions by tree {c['query_ms']:.0f} ms"
        )
    one, two = r["per_tree_seconds"][1], r["per_tree_seconds"][2]
    print(
        f"per-tree phase (layers + experts of {r['trees']} trees, via Dagster on a Dask"
        f" LocalCluster): 1 worker {one:.1f}s, 2 workers {two:.1f}s,"
        f" ratio {r['speedup_2_workers']:.2f}x"
    )
    print(
        f"target: extraction read/tensor <= {TARGET_READ_RATIO}; 2 workers faster than 1"
        " (bounded by the largest tree and this machine's 2 cores)"
    )


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
