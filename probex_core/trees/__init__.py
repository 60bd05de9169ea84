"""Model Tree recovery from weights alone (MoTHer, Horwitz et al. 2025).

Cards lie or are missing; the weights do not. Models are grouped by architecture signature,
clustered into trees by weight distance, and inside every tree a minimum directed spanning
arborescence (Chu-Liu/Edmonds) over `D + λ·scale·T` (T: the kurtosis direction cue) gives
each model's parent. The root is the tree's medoid, and D is measured after removing the
few directions that all fine-tunes of the tree drift along (see `drift_removed_distances`).
Declared `base_model` edges are only hints: they vote the kurtosis direction, choose among
a handful of structure settings, and are checked against the recovered edges.

LoRA adapters carry only ΔW = B @ A, so they have their own signature and their base (a full
model) is never in their group. An adapter is attached to the full model whose layers it
adapts (same names and shapes); when several full models qualify, the weights decide: the
top singular subspaces of a trained ΔW align with its base W (LoRA paper §7), so the
candidate with the largest alignment wins. Adapters are leaves: every adapter edge is
base → adapter.

Hub-scale metadata trees (declared edges only) are rebuilt with a DuckDB recursive query.

The package, by seam: `core` (records, settings, results, signatures), `distances`,
`arborescence` (parent edges), `recovery` (`recover_trees`), `scoring` (against ground truth),
`declared` (metadata-only trees at hub scale).
"""

from probex_core.trees.arborescence import min_arborescence
from probex_core.trees.core import (
    Disagreement,
    ModelAssignment,
    TreeConfig,
    TreeInfo,
    TreeRecovery,
    WeightRecord,
    architecture_signature,
    choose_recovery_layers,
    is_head_layer,
    tree_id_for,
)
from probex_core.trees.declared import (
    trees_from_declared_edges_networkx,
    trees_from_declared_edges_sql,
)
from probex_core.trees.distances import (
    adapter_alignment,
    cluster_by_distance,
    distances_to,
    layer_scales,
    pairwise_distances,
    weight_kurtosis,
)
from probex_core.trees.recovery import ABSENT, absent_bases, adapter_candidates, recover_trees
from probex_core.trees.scoring import (
    RecoveryScores,
    TreeScore,
    TruthEntry,
    score_recovery,
    truth_from_manifest,
)

__all__ = [
    "ABSENT",
    "absent_bases",
    "Disagreement",
    "ModelAssignment",
    "TreeConfig",
    "TreeInfo",
    "TreeRecovery",
    "TruthEntry",
    "WeightRecord",
    "adapter_alignment",
    "adapter_candidates",
    "architecture_signature",
    "choose_recovery_layers",
    "cluster_by_distance",
    "distances_to",
    "is_head_layer",
    "layer_scales",
    "min_arborescence",
    "pairwise_distances",
    "recover_trees",
    "score_recovery",
    "RecoveryScores",
    "TreeScore",
    "trees_from_declared_edges_networkx",
    "trees_from_declared_edges_sql",
    "truth_from_manifest",
    "tree_id_for",
    "weight_kurtosis",
]
