"""The per-tree partitions on a Dask cluster (`probex run --dask [ADDRESS]`).

Each stale tree is one Dask task: on a worker it materialises that tree's partition (layers,
then experts) with the same asset code and the same Dagster instance as `probex run` does
in-process (`runner.build_tree`), so runs, checks and staleness read the same afterwards.
Without an address, a `distributed.LocalCluster` of worker processes on 127.0.0.1 is started
for the run. Every worker must reach the home, at the same path (a LocalCluster does; a
remote cluster through a shared mount) or at its URL (each worker then works in its own
mirror, `probex_core.storage`), and the hub.

Dagster's own `dask_executor` (dagster-dask 0.29.27 with dagster 1.13.27) does not run our
partitioned job: it hands the run to `Client.submit`, dask's task-spec parser walks the
run's partition subset (a NamedTuple-based `@record`), and `@record` forbids iteration
("Iteration is not allowed on `@record` KeyRangesPartitionsSubset"; dask 2024.10, 2024.11
and 2026.8 alike). Hence one task per partition here. A task whose worker dies is run again
on another by the scheduler (`distributed.scheduler.allowed-failures`, default 3: with 0,
the killed tree fails the run as `KilledWorker`); a task that raises is retried `RETRIES`
times. Each partition writes its files atomically, so a half-done one leaves nothing
visible and the rerun completes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import dagster as dg

from assets.experts import ExpertTraining
from probex_core.catalog import Home
from probex_core.errors import UserError

LOCAL_WORKERS = 2
RETRIES = 2  # reruns of a tree whose task raised (a dead worker: allowed-failures)
CONNECT_TIMEOUT = "10s"  # to reach a given scheduler


@contextlib.contextmanager
def dask_client(address: str) -> Iterator:
    """A client of the scheduler at `address`, or of a LocalCluster started for the block
    ("local": worker processes, one thread each, on 127.0.0.1, no dashboard)."""
    from distributed import Client

    if address != "local":
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except OSError as e:  # no scheduler there: the user's address, one line
            raise UserError(f"no Dask scheduler reachable at {address}: {e}") from e
        with client:
            yield client
        return
    with local_cluster() as cluster, Client(cluster) as client:
        yield client


def local_cluster(workers: int = LOCAL_WORKERS):
    """A `distributed.LocalCluster` of `workers` processes, one thread each, on 127.0.0.1,
    no dashboard (a context manager; its `scheduler_address` is what tasks are sent to)."""
    import logging

    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


def _build_on_worker(root: str, hub_spec: str, tree: str, training: dict | None) -> str:
    """Runs on a worker; plain values in and out (Dagster's records are serialised: dask
    would otherwise try to walk them)."""
    import torch

    from orchestration.runner import build_tree

    torch.set_num_threads(1)  # one task per worker thread: no oversubscribed cores
    config = ExpertTraining(**training) if training is not None else None
    return dg.serialize_value(build_tree(Home(root), hub_spec, tree, config))


def build_trees_on_dask(
    home: Home,
    hub_spec: str,
    trees: list[str],
    training: ExpertTraining | None,
    address: str,
    names: dict[str, str],
) -> list[dg.AssetCheckEvaluation]:
    """Every tree as one task on the cluster; their checks. A tree that fails is named and
    the others still finish; then the run stops (the failed tree stays stale)."""
    from orchestration.runner import expert_line

    t = time.perf_counter()
    settings = training.model_dump() if training is not None else None
    with dask_client(address) as client:
        workers = len(client.scheduler_info()["workers"])
        print(f"      on Dask ({client.scheduler.address}): {workers} workers, "
              f"{len(trees)} trees", flush=True)  # fmt: skip
        futures = {
            tree: client.submit(
                _build_on_worker,
                home.spec,
                hub_spec,
                tree,
                settings,
                key=f"probex-tree-{tree}",
                pure=False,
                retries=RETRIES,
            )
            for tree in trees
        }
        checks, failed = [], []
        for tree, future in futures.items():
            name = names.get(tree, tree)
            try:
                checks += dg.deserialize_value(future.result(), list)
            except Exception as e:  # named below; the other trees' results are kept
                failed.append(f"{name} ({tree}): {type(e).__name__}: {e}")
                continue
            print(f"      {name}: {expert_line(home, tree)}", flush=True)
    print(f"      {len(trees)} trees in {time.perf_counter() - t:.1f}s on Dask", flush=True)
    if failed:
        raise RuntimeError("trees failed on Dask: " + "; ".join(failed))
    return checks
