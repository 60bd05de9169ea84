"""The per-tree partitions on Dask from the Dagster UI.

- `rebuild_tree_on_dask`: the per-tree job (layers, experts) on Dagster's Dask executor
  (`dask_executor.partitioned_dask_executor`); launch a tree's partition with
  `execution: {config: {cluster: {existing: {address: tcp://…}}}}`, or without config for
  a LocalCluster started for the run.
- `rebuild_stale_trees_on_dask`: `probex run --dask` as a job: every stale tree, launched
  with the scheduler's address (`dask_run.build_trees_on_dask`).

No `from __future__ import annotations` here: Dagster reads the op's config and resource
types from its annotations at definition time.
"""

import dagster as dg
from pydantic import Field

from assets.experts import ExpertTraining, tree_experts
from assets.layers import tree_layers
from assets.partitions import TREES
from assets.resources import HubSourceResource, ProbexHome
from orchestration.dask_executor import partitioned_dask_executor
from orchestration.dask_run import LOCAL_WORKERS, build_trees_on_dask

rebuild_tree_on_dask_job = dg.define_asset_job(
    "rebuild_tree_on_dask",
    selection=[tree_layers, tree_experts],
    partitions_def=TREES,
    executor_def=partitioned_dask_executor,
    description="Re-extract one tree's layers and retrain its experts, each step a task on a "
    "Dask cluster (Dagster's dask executor).",
)


class DaskRebuild(dg.Config):
    """What the UI's `rebuild_stale_trees_on_dask` job is launched with."""

    address: str = Field(
        default="local",
        description="the Dask scheduler (tcp://host:8786), or 'local' for a LocalCluster of "
        f"{LOCAL_WORKERS} worker processes on this machine",
    )
    training: ExpertTraining = Field(default_factory=ExpertTraining)


@dg.op(description="Rebuild the layers and experts of every stale tree, one Dask task each.")
def rebuild_stale_trees(
    context: dg.OpExecutionContext,
    config: DaskRebuild,
    probex_home: ProbexHome,
    hub: HubSourceResource,
) -> list[str]:
    from assets.partitions import register_trees
    from orchestration.runner import WARN, tree_names
    from probex_core import pipeline

    home = probex_home.get()
    plan = pipeline.stale_trees(home)
    register_trees(context.instance, plan.wanted)
    if not plan.stale:
        context.log.info("no tree is stale")
        return []
    checks = build_trees_on_dask(
        home, hub.spec, plan.stale, config.training, config.address, tree_names(home)
    )
    failed = [c.check_name for c in checks if not c.passed and c.severity != WARN]
    if failed:
        raise dg.Failure(f"checks failed: {', '.join(failed)}")
    return plan.stale


@dg.job(description="`probex run --dask` from the UI: the stale trees on a Dask cluster.")
def rebuild_stale_trees_on_dask() -> None:
    rebuild_stale_trees()
