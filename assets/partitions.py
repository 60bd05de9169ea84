"""One dynamic partition per recovered Model Tree, and the one place that registers them."""

import warnings
from collections.abc import Iterable

import dagster as dg

TREES = dg.DynamicPartitionsDefinition(name="trees")

# The per-tree checks are partitioned like their assets, so a tree's run checks that tree
# only. Dagster marks partitioned checks a preview; they are relied on knowingly (tests pin
# their behaviour), so the warning is not repeated at every import of the assets.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)


def unregistered(instance: dg.DagsterInstance, tree_ids: Iterable[str]) -> list[str]:
    """The trees among `tree_ids` that have no partition yet, in the order given."""
    known = set(instance.get_dynamic_partitions(TREES.name))
    return [t for t in tree_ids if t not in known]


def register_trees(instance: dg.DagsterInstance, tree_ids: Iterable[str]) -> list[str]:
    """Add a partition for every tree that has none; returns the trees added."""
    new = unregistered(instance, tree_ids)
    if new:
        instance.add_dynamic_partitions(TREES.name, new)
    return new
