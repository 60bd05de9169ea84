"""Per tree: the ProbeX experts (discriminative and zero-shot) and their baselines."""

import dagster as dg
from pydantic import Field

from assets._common import materialize_result, progress
from assets.layers import tree_layers
from assets.partitions import TREES
from assets.resources import ProbexHome
from probex_core import pipeline
from probex_core.store import TreeExperts


class ExpertTraining(dg.Config):
    """How hard to train; the defaults are the ones the README's numbers were measured with."""

    epochs: int = Field(
        default=pipeline.ExpertSettings.epochs, description="training epochs per expert"
    )
    sweep_epochs: int = Field(
        default=pipeline.ExpertSettings.sweep_epochs,
        description="epochs per layer in the layer sweep",
    )
    encoder: str = Field(
        default=pipeline.ExpertSettings.encoder,
        description="text encoder spec (minilm | open_clip:NAME:WEIGHTS)",
    )
    val_every: int = Field(
        default=pipeline.ExpertSettings.val_every, description="validate every N epochs"
    )
    patience: int | None = Field(
        default=pipeline.ExpertSettings.patience,
        description="stop after this many validations without a gain (null: never)",
    )
    seed: int = Field(default=0, description="seed for splits and training")
    probex_init: str = Field(
        default=pipeline.ExpertSettings.probex_init,
        description="ridge: start ProbeX as the layer's ridge read-out; random: the paper's init",
    )

    def settings(self) -> pipeline.ExpertSettings:
        return pipeline.ExpertSettings(
            epochs=self.epochs,
            sweep_epochs=self.sweep_epochs,
            val_every=self.val_every,
            patience=self.patience,
            encoder=self.encoder,
            seed=self.seed,
            probex_init=self.probex_init,
        )


@dg.asset(
    group_name="experts",
    deps=[tree_layers],
    partitions_def=TREES,
    code_version=pipeline.CODE_VERSIONS["tree_experts"],
    description="For one tree: layer sweep on validation, then a ProbeX discriminative expert, "
    "a ProbeX zero-shot expert (text space), and baselines (Dense, StatNN) on the same split.",
)
def tree_experts(
    context: dg.AssetExecutionContext, config: ExpertTraining, probex_home: ProbexHome
) -> dg.MaterializeResult:
    report = pipeline.train_experts(
        probex_home.get(), context.partition_key, config.settings(), progress=progress(context)
    )
    return materialize_result(report)


@dg.asset_check(
    asset=tree_experts,
    partitions_def=TREES,
    blocking=True,
    description="expert weights finite; validation accuracy above chance",
)
def tree_experts_gate(
    context: dg.AssetCheckExecutionContext, probex_home: ProbexHome
) -> dg.AssetCheckResult:
    problems, facts = pipeline.verify_experts(probex_home.get(), context.partition_key)
    return dg.AssetCheckResult(
        passed=not problems, metadata={"problems": "\n".join(problems) or "none", **facts}
    )


@dg.asset_check(
    asset=tree_experts,
    partitions_def=TREES,
    description="the tree got experts; a tree with too few documented models is skipped, "
    "which this check reports as a warning with the reason",
)
def tree_experts_trained(
    context: dg.AssetCheckExecutionContext, probex_home: ProbexHome
) -> dg.AssetCheckResult:
    reason = TreeExperts(probex_home.get(), context.partition_key).meta().skipped
    return dg.AssetCheckResult(
        passed=not reason,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"skipped: {reason}" if reason else "trained",
        metadata={"skipped": reason or "no"},
    )
