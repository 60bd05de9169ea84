"""The crawl: every repo of the hub, its card and tensor index; bad repos kept with a reason."""

import dagster as dg

from assets._common import check_result, materialize_result, progress
from assets.resources import HubSourceResource, ProbexHome
from probex_core import pipeline
from probex_core.catalog import read_table
from probex_core.quality import gxe, validate


@dg.asset(
    group_name="hub",
    code_version=pipeline.CODE_VERSIONS["hub_repos"],
    description="Every repo of the hub: files, card metadata, tensor index (names, shapes, "
    "byte offsets), architecture signature, fingerprint. Reads headers only. Repos that "
    "cannot be used go to `rejected_repos` with the file and the reason.",
)
def hub_repos(
    context: dg.AssetExecutionContext, probex_home: ProbexHome, hub: HubSourceResource
) -> dg.MaterializeResult:
    report = pipeline.crawl(probex_home.get(), hub.source(), progress=progress(context))
    context.log.info(
        f"crawled {report.summary['repos']} repos, rejected {report.summary['rejected']}"
    )
    return materialize_result(report)


@dg.asset_check(
    asset=hub_repos,
    blocking=True,
    description="repo ids unique and well formed; signatures and fingerprints present "
    "(blocking: a catalog that breaks this must not be turned into trees)",
)
def hub_repos_schema(probex_home: ProbexHome) -> dg.AssetCheckResult:
    df = read_table(probex_home.get(), "repos")
    return check_result(
        validate(
            df,
            "hub_repos",
            [
                gxe.ExpectColumnValuesToNotBeNull(column="repo_id"),
                gxe.ExpectColumnValuesToBeUnique(column="repo_id"),
                gxe.ExpectColumnValuesToMatchRegex(column="repo_id", regex=r"^[\w.\-]+/[\w.\-]+$"),
                gxe.ExpectColumnValuesToNotBeNull(column="signature"),
                gxe.ExpectColumnValuesToNotBeNull(column="fingerprint"),
                gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["full", "lora"]),
                gxe.ExpectTableRowCountToBeBetween(min_value=1),
            ],
        )
    )


@dg.asset_check(asset=hub_repos, description="every rejected repo names its file and a reason")
def rejected_repos_have_reasons(probex_home: ProbexHome) -> dg.AssetCheckResult:
    df = read_table(probex_home.get(), "rejected")
    return check_result(
        validate(
            df,
            "rejected_repos",
            [
                gxe.ExpectColumnValuesToNotBeNull(column="repo_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="reason"),
                gxe.ExpectColumnValuesToNotBeNull(column="path"),
            ],
        )
    )
