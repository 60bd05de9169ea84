"""Model Trees recovered from weights; declared base models are hints that get checked."""

import dagster as dg

from assets._common import materialize_result, progress
from assets.hub import hub_repos
from assets.partitions import register_trees
from assets.resources import HubSourceResource, ProbexHome
from probex_core import pipeline
from probex_core.catalog import read_table
from probex_core.quality import gxe, validate
from probex_core.trees import ABSENT


@dg.asset(
    group_name="trees",
    deps=[hub_repos],
    code_version=pipeline.CODE_VERSIONS["model_trees"],
    description="Trees recovered from weights (architecture signature, then weight-distance "
    "clustering, then a kurtosis-directed minimum spanning arborescence), the router, and "
    "every disagreement with a card's declared base_model. Registers one `trees` partition "
    "per tree.",
)
def model_trees(
    context: dg.AssetExecutionContext, probex_home: ProbexHome, hub: HubSourceResource
) -> dg.MaterializeResult:
    report = pipeline.recover(probex_home.get(), hub.source(), progress=progress(context))
    new = register_trees(context.instance, report.summary["tree_ids"])
    if new:
        context.log.info(f"added tree partitions: {new}")
    return materialize_result(report)


@dg.asset_check(
    asset=model_trees,
    description="every crawled repo not rejected for its weights has exactly one tree; one "
    "root per tree (none when the root is absent from the hub: adapters of a missing base)",
)
def model_trees_complete(probex_home: ProbexHome) -> dg.AssetCheckResult:
    home = probex_home.get()
    members = read_table(home, "tree_members")
    rejected = read_table(home, "rejected")
    n_rejected = int((rejected["stage"] == "weights").sum()) if "stage" in rejected else 0
    n_repos = len(read_table(home, "repos")) - n_rejected  # weight-rejected: in no tree
    roots = members[members.is_root].groupby("tree_id").size()
    summary = read_table(home, "tree_summary").set_index("tree_id")
    want = {t: 0 if str(r).startswith(ABSENT) else 1 for t, r in summary.root_repo.items()}
    report = validate(
        members,
        "model_trees",
        [
            gxe.ExpectColumnValuesToBeUnique(column="repo_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="tree_id"),
            gxe.ExpectTableRowCountToEqual(value=n_repos),
            gxe.ExpectColumnValuesToBeBetween(column="depth", min_value=0),
        ],
    )
    one_root = set(want) == set(members.tree_id) and all(
        int(roots.get(t, 0)) == n for t, n in want.items()
    )
    return dg.AssetCheckResult(
        passed=report.success and one_root,
        metadata={
            "summary": report.summary(),
            "trees": int(members.tree_id.nunique()),
            "one_root_per_tree": one_root,
        },
    )
