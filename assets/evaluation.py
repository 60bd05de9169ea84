"""Every model routed to its tree's expert; scores against ground truth when it exists."""

import dagster as dg

from assets._common import check_result, materialize_result, report_metadata
from assets.experts import tree_experts
from assets.resources import HubSourceResource, ProbexHome
from probex_core import pipeline
from probex_core.catalog import read_table
from probex_core.quality import gxe, validate


@dg.asset(
    group_name="evaluation",
    deps=[tree_experts],
    code_version=pipeline.CODE_VERSIONS["model_predictions"],
    description="Every model (documented or not) routed to its tree's expert: predicted "
    "training classes with probabilities, and its embedding in the weight-language space.",
)
def model_predictions(probex_home: ProbexHome) -> dg.MaterializeResult:
    report = pipeline.predict(probex_home.get())
    return materialize_result(report)


@dg.asset_check(
    asset=model_predictions,
    description="probabilities in [0, 1]; every prediction names a routed repo",
)
def predictions_valid(probex_home: ProbexHome) -> dg.AssetCheckResult:
    df = read_table(probex_home.get(), "predictions_long")
    return check_result(
        validate(
            df,
            "model_predictions",
            [
                gxe.ExpectColumnValuesToNotBeNull(column="repo_id"),
                gxe.ExpectColumnValuesToBeBetween(
                    column="probability", min_value=0.0, max_value=1.0
                ),
                gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1),
                gxe.ExpectCompoundColumnsToBeUnique(column_list=["repo_id", "class_name"]),
            ],
        )
    )


@dg.asset_check(
    asset=model_predictions,
    description="every model's embedding carries its search calibration: a positive scale, "
    "an offset, and an unknown-class mass ≥ 0",
)
def embeddings_valid(probex_home: ProbexHome) -> dg.AssetCheckResult:
    df = read_table(probex_home.get(), "model_embeddings").drop(columns="embedding")
    return check_result(
        validate(
            df,
            "model_embeddings",
            [
                gxe.ExpectColumnValuesToBeUnique(column="repo_id"),
                gxe.ExpectColumnValuesToNotBeNull(column="vocab_lse"),
                gxe.ExpectColumnValuesToNotBeNull(column="unknown_mass"),
                gxe.ExpectColumnValuesToBeBetween(column="unknown_mass", min_value=0),
                gxe.ExpectColumnValuesToBeBetween(
                    column="logit_scale", min_value=0, strict_min=True
                ),
            ],
        )
    )


@dg.asset(
    group_name="evaluation",
    deps=[model_predictions],
    code_version=pipeline.CODE_VERSIONS["evaluations"],
    description="Accuracy per tree and method (ProbeX vs baselines) on undocumented models, "
    "zero-shot on held-out classes, routing and tree-recovery scores, search precision.",
)
def evaluations(probex_home: ProbexHome, hub: HubSourceResource) -> dg.MaterializeResult:
    report = pipeline.evaluate(probex_home.get(), hub.manifest_path())
    return dg.MaterializeResult(metadata=report_metadata(report))


@dg.asset_check(asset=evaluations, description="scores are finite and within their ranges")
def evaluations_valid(probex_home: ProbexHome) -> dg.AssetCheckResult:
    df = read_table(probex_home.get(), "evaluation_rows")
    return check_result(
        validate(
            df,
            "evaluations",
            [
                gxe.ExpectColumnValuesToNotBeNull(column="value"),
                gxe.ExpectColumnValuesToNotBeNull(column="metric"),
                gxe.ExpectCompoundColumnsToBeUnique(
                    column_list=["tree_id", "method", "metric", "split"]
                ),
            ],
        )
    )
