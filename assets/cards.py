"""The documentation a hub lacks: a generated model card for every undocumented model."""

import dagster as dg
from pydantic import Field

from assets._common import check_result, materialize_result
from assets.evaluation import evaluations
from assets.resources import ProbexHome
from probex_core import pipeline
from probex_core.catalog import read_table
from probex_core.pipeline.cards import build_cards
from probex_core.quality import gxe, validate


class CardOptions(dg.Config):
    contradicted: bool = Field(
        default=False,
        description="also write cards for documented models whose declared base model the "
        "weights contradict",
    )


@dg.asset(
    group_name="cards",
    deps=[evaluations],
    code_version=pipeline.CODE_VERSIONS["model_cards"],
    description="A Hugging Face model card (README.md under $PROBEX_HOME/cards/<org>/<name>/) "
    "for every undocumented model: recovered tree and parent as base_model, the training "
    "classes its tree's expert lists above a confidence chosen on validation, and that "
    "expert's measured accuracy. A card is rewritten only when its content changes.",
)
def model_cards(config: CardOptions, probex_home: ProbexHome) -> dg.MaterializeResult:
    report = build_cards(probex_home.get(), contradicted=config.contradicted)
    return materialize_result(report)


@dg.asset_check(
    asset=model_cards,
    description="one card per model; thresholds are probabilities; a card that predicts "
    "names its tree",
)
def model_cards_valid(probex_home: ProbexHome) -> dg.AssetCheckResult:
    df = read_table(probex_home.get(), "model_cards")
    return check_result(
        validate(
            df,
            "model_cards",
            [
                gxe.ExpectColumnValuesToBeUnique(column="repo_id"),
                gxe.ExpectColumnValuesToBeUnique(column="path"),
                gxe.ExpectColumnValuesToBeBetween(
                    column="confidence_threshold", min_value=0.0, max_value=1.0
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="status", value_set=["predicted", "no-expert", "unknown-tree"]
                ),
                gxe.ExpectColumnValuesToNotBeNull(column="content_digest"),
            ],
        )
    )
