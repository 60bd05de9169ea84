"""The pipeline's steps as plain functions: each reads its inputs from the home, does one
thing, writes its tables and artifacts atomically, and returns a `StepReport` for the UI.

The Dagster assets in `assets/` are thin wrappers around these; `probex run` calls the same
assets. Nothing here imports dagster.
"""

from probex_core.pipeline.common import CODE_VERSIONS, ExpertSettings, StepReport
from probex_core.pipeline.crawl import (
    crawl,
    crawled_listing,
    load_records,
)
from probex_core.pipeline.evaluate import evaluate
from probex_core.pipeline.experts import train_experts, verify_experts
from probex_core.pipeline.layers import extract_layers, verify_layers
from probex_core.pipeline.predict import predict
from probex_core.pipeline.recover import recover
from probex_core.pipeline.state import StalePlan, stale_trees

__all__ = [
    "CODE_VERSIONS",
    "ExpertSettings",
    "StalePlan",
    "StepReport",
    "crawl",
    "crawled_listing",
    "evaluate",
    "extract_layers",
    "load_records",
    "predict",
    "recover",
    "stale_trees",
    "train_experts",
    "verify_experts",
    "verify_layers",
]
