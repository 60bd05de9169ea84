"""The one Definitions object: every asset, check, job, sensor and resource."""

from __future__ import annotations

import dagster as dg

from assets import cards, evaluation, experts, hub, layers, trees
from assets.resources import make_resources
from orchestration.dask_job import rebuild_stale_trees_on_dask, rebuild_tree_on_dask_job
from orchestration.sensors import (
    crawl_job,
    hub_change_sensor,
    rebuild_tree_job,
    refresh_job,
    stale_trees_sensor,
)

ASSET_MODULES = [hub, trees, layers, experts, evaluation, cards]


def build_definitions(home: str | None = None, hub_spec: str | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[
            crawl_job,
            rebuild_tree_job,
            refresh_job,
            rebuild_stale_trees_on_dask,
            rebuild_tree_on_dask_job,
        ],
        sensors=[hub_change_sensor, stale_trees_sensor],
        resources=make_resources(home, hub_spec),
    )


defs = build_definitions()


def rebuild_job_from_env() -> dg.JobDefinition:
    """The per-tree rebuild job, rebuilt from the environment in a step subprocess
    (a reconstructable target for the multiprocess executor)."""
    return build_definitions().resolve_job_def("rebuild_tree")


def dask_job_from_env() -> dg.JobDefinition:
    """The per-tree job on Dagster's Dask executor, rebuilt from the environment on a worker
    (its reconstructable target)."""
    return build_definitions().resolve_job_def("rebuild_tree_on_dask")
