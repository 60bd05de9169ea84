"""One dynamic partition per recovered Model Tree, and the one place that registers them."""

from collections.abc import Iterable

import dagster as dg

TREES = dg.DynamicPartitionsDefinition(name="trees")


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
