"""The per-tree partitions on a Dask cluster (`probex run --dask [ADDRESS]`).

Each stale tree is one Dagster run of the per-tree job `rebuild_tree_on_dask` (layers, then
experts, then their checks) on Dagster's Dask executor (`dask_executor`): every step of the
run is a task on the cluster, running the same asset code against the same Dagster instance
as `probex run` does in-process, so runs, checks and staleness read the same afterwards. The
trees' runs go to the cluster together (one orchestrating process each, at most `MAX_RUNS`).
Without an address, a `distributed.LocalCluster` of worker processes on 127.0.0.1 is started
for the run. Every worker must reach the home, at the same path (a LocalCluster does; a
remote cluster through a shared mount) or at its URL (each worker then works in its own
mirror, `probex_core.storage`), the hub, and the Dagster instance (the home's, on this
machine for a LocalCluster; `dagster.yaml` with shared storage for a remote cluster).

A step whose worker dies is run again on another worker by the scheduler
(`distributed.scheduler.allowed-failures`, default 3: with 0, the killed tree's run fails
with `KilledWorker`); a run that fails is run again `RETRIES` times. Each partition writes
its files atomically, so a half-done one leaves nothing visible and the rerun completes it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import dagster as dg

from assets.experts import ExpertTraining
from probex_core.catalog import Home
from probex_core.errors import UserError

LOCAL_WORKERS = 2
RETRIES = 2  # reruns of a tree whose run failed (a dead worker: allowed-failures)
MAX_RUNS = 8  # trees whose runs are on the cluster at once (one orchestrating process each)
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


def run_config(home: Home, hub_spec: str, address: str, training: dict | None) -> dict:
    """The per-tree job's run config: this home and hub, on the scheduler at `address`."""
    config = {
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},  # the steps' lines only
        "execution": {"config": {"cluster": {"existing": {"address": address}}}},
        "resources": {
            "probex_home": {"config": {"root": home.spec}},
            "hub": {"config": {"spec": hub_spec}},
        },
    }
    if training is not None:
        config["ops"] = {"tree_experts": {"config": training}}
    return config


def _run_tree(caller: dict, home_spec: str, config: dict, tree: str) -> str:
    """In its own process: one tree's partition as a Dagster run on the cluster, run again if
    it fails; its checks, serialised (raises with the failed steps' errors once the retries
    are spent)."""
    from orchestration.definitions import dask_job_from_env
    from orchestration.runner import instance_for

    _adopt(caller)
    job = dg.reconstructable(dask_job_from_env)
    with instance_for(Home(home_spec)) as instance:
        for _ in range(RETRIES + 1):
            with dg.execute_job(job, instance, config, tags={"dagster/partition": tree}) as run:
                if run.success:
                    return dg.serialize_value(run.get_asset_check_evaluations())
                errors = _errors(run)
    raise RuntimeError(f"run {run.run_id} failed {RETRIES + 1} times: " + "; ".join(errors))


def _caller() -> dict:
    """What a run's process takes from this one as it is now (`_adopt`)."""
    import fsspec

    return {"environ": dict(os.environ), "cwd": os.getcwd(), "fsspec": dict(fsspec.config.conf)}


def _adopt(caller: dict) -> None:
    """Make this process's environment, working directory and fsspec settings the caller's:
    the runs' processes fork from a server that imported the assets once, when it started,
    with the environment of that time (PROBEX_CACHE, an S3 endpoint may have changed since)."""
    import fsspec

    os.environ.clear()
    os.environ.update(caller["environ"])
    os.chdir(caller["cwd"])
    fsspec.config.conf.clear()
    fsspec.config.conf.update(caller["fsspec"])


def _errors(run: dg.ExecuteJobResult) -> list[str]:
    """What made a run fail: its failed steps' errors, else the run's own."""
    steps = [
        f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
        for e in run.get_step_failure_events()
        if e.step_failure_data.error is not None
    ]
    failures = [e.event_specific_data for e in run.all_events if e.is_run_failure]
    return steps or [f.error.message.strip() for f in failures if f and f.error is not None]


def build_trees_on_dask(
    home: Home,
    hub_spec: str,
    trees: list[str],
    training: ExpertTraining | None,
    address: str,
    names: dict[str, str],
) -> list[dg.AssetCheckEvaluation]:
    """Every tree as one Dagster run on the cluster; their checks. A tree that fails is named
    and the others still finish; then the run stops (the failed tree stays stale)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from assets.partitions import register_trees
    from orchestration.runner import expert_line, instance_for

    t = time.perf_counter()
    settings = training.model_dump() if training is not None else None
    with instance_for(home) as instance:  # its storage made once, before the runs open it
        register_trees(instance, trees)
    with dask_client(address) as client:
        scheduler = client.scheduler.address
        workers = len(client.scheduler_info()["workers"])
        print(f"      on Dask ({scheduler}): {workers} workers, {len(trees)} trees, "
              "Dagster's dask executor", flush=True)  # fmt: skip
        config = run_config(home, hub_spec, scheduler, settings)
        checks, failed = [], []
        # a process per run: Dagster configures Python logging per run, which is not safe
        # across threads. Forked from a server that imports the assets once (4-5 s of CPU
        # each process would spend importing them), then given this process's environment
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["orchestration.definitions"])
        caller = _caller()
        with ProcessPoolExecutor(min(MAX_RUNS, len(trees)), mp_context=context) as pool:
            runs = {pool.submit(_run_tree, caller, home.spec, config, t): t for t in trees}
            for run in as_completed(runs):
                tree = runs[run]
                name = names.get(tree, tree)
                try:
                    checks += dg.deserialize_value(run.result(), list)
                except Exception as e:  # named below; the other trees' results are kept
                    failed.append(f"{name} ({tree}): {type(e).__name__}: {e}")
                    continue
                print(f"      {name}: {expert_line(home, tree)}", flush=True)
    print(f"      {len(trees)} trees in {time.perf_counter() - t:.1f}s on Dask", flush=True)
    if failed:
        raise RuntimeError("trees failed on Dask: " + "; ".join(sorted(failed)))
    return checks
