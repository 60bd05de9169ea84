"""Incremental rebuilds: only the trees whose members (or expert code) changed are rebuilt.

Dagster's own staleness does not cover dynamic partitions well (STACK.md: issues 22553,
28063, 33708), so the evidence is ours: each tree's wanted version is a hash of its members'
fingerprints and the layer/expert code versions; each trained expert records the version it
was built from. A tree whose recorded version differs is stale. The run key is the wanted
version, so a tree is never launched twice for the same state.
"""

import dagster as dg

from assets.cards import model_cards
from assets.evaluation import evaluations, model_predictions
from assets.experts import tree_experts
from assets.hub import hub_repos
from assets.layers import tree_layers
from assets.partitions import TREES, unregistered
from assets.resources import HubSourceResource, ProbexHome
from assets.trees import model_trees
from probex_core import pipeline

# Step subprocesses fork from a server that imported the assets once, instead of each step
# importing dagster and torch afresh (spawn): a tree's rebuild starts its steps in well under
# a second rather than several seconds each.
FORKSERVER_EXECUTION = {
    "execution": {
        "config": {
            "multiprocess": {
                "start_method": {
                    "forkserver": {
                        "preload_modules": [
                            "orchestration.definitions",
                            "great_expectations.expectations",
                        ]
                    }
                }
            }
        }
    }
}

rebuild_tree_job = dg.define_asset_job(
    "rebuild_tree",
    selection=[tree_layers, tree_experts],
    partitions_def=TREES,
    config=FORKSERVER_EXECUTION,
    description="Re-extract one tree's layers and retrain its experts.",
)
crawl_job = dg.define_asset_job(
    "crawl_and_recover",
    selection=[hub_repos, model_trees],
    description="Crawl the hub and recover its trees.",
)
refresh_job = dg.define_asset_job(
    "predict_and_evaluate",
    selection=[model_predictions, evaluations, model_cards],
    description="Route every model to its expert, score everything, write model cards.",
)


def plan_rebuilds(home, instance: dg.DagsterInstance) -> dg.SensorResult | dg.SkipReason:
    """The run requests for stale trees, plus partitions for trees seen for the first time."""
    try:
        plan = pipeline.stale_trees(home)
    except FileNotFoundError as err:
        return dg.SkipReason(f"no recovered trees yet ({err})")
    new = unregistered(instance, plan.wanted)  # registered by the SensorResult below
    requests = [
        dg.RunRequest(partition_key=t, run_key=f"{t}:{plan.wanted[t]}", tags={"probex/tree": t})
        for t in plan.stale
    ]
    if not requests and not new:
        return dg.SkipReason(f"all {len(plan.wanted)} trees are up to date")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[TREES.build_add_request(new)] if new else [],
    )


@dg.sensor(
    job=rebuild_tree_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Rebuild layers and experts of exactly the trees that changed.",
)
def stale_trees_sensor(context: dg.SensorEvaluationContext, probex_home: ProbexHome):
    return plan_rebuilds(probex_home.get(), context.instance)


@dg.sensor(
    job=crawl_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-crawl when the hub's listing (files, sizes, times) changes.",
)
def hub_change_sensor(
    context: dg.SensorEvaluationContext, hub: HubSourceResource, probex_home: ProbexHome
):
    state = hub.source().listing_fingerprint()
    # first tick: the listing the last crawl saw stands in for a cursor, so opening the UI
    # after `probex run` does not crawl an unchanged hub again
    if state == (context.cursor or pipeline.crawled_listing(probex_home.get())):
        return dg.SkipReason("hub unchanged")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=state)], cursor=state)
