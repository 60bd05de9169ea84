"""Per tree: the candidate layers of every member, canonicalised to 2-D, one file per layer."""

import dagster as dg

from assets._common import materialize_result, progress
from assets.partitions import TREES
from assets.resources import HubSourceResource, ProbexHome
from assets.trees import model_trees
from probex_core import pipeline


@dg.asset(
    group_name="layers",
    deps=[model_trees],
    partitions_def=TREES,
    code_version=pipeline.CODE_VERSIONS["tree_layers"],
    description="For one tree: each candidate layer of every member, read lazily (only that "
    "tensor's bytes) and canonicalised to 2-D, stacked in one safetensors file per layer.",
)
def tree_layers(
    context: dg.AssetExecutionContext, probex_home: ProbexHome, hub: HubSourceResource
) -> dg.MaterializeResult:
    report = pipeline.extract_layers(
        probex_home.get(), hub.source(), context.partition_key, progress=progress(context)
    )
    return materialize_result(report)


@dg.asset_check(
    asset=tree_layers,
    partitions_def=TREES,
    blocking=True,
    description="every member present in every layer file; no NaN or Inf weights",
)
def tree_layers_complete(
    context: dg.AssetCheckExecutionContext, probex_home: ProbexHome
) -> dg.AssetCheckResult:
    problems = pipeline.verify_layers(probex_home.get(), context.partition_key)
    return dg.AssetCheckResult(
        passed=not problems, metadata={"problems": "\n".join(problems) or "none"}
    )
