"""Which trees are stale: the evidence behind incremental rebuilds."""

from __future__ import annotations

from dataclasses import dataclass

from probex_core.catalog import Home, read_table
from probex_core.pipeline.layers import tree_version
from probex_core.store import TreeExperts


@dataclass(frozen=True)
class StalePlan:
    wanted: dict[str, str]  # tree id → the version its layers and experts should be built from
    stale: list[str]  # trees whose experts are missing or were built from another version


def stale_trees(home: Home) -> StalePlan:
    """Compare each tree's wanted version with the one its trained experts recorded."""
    trees = read_table(home, "tree_summary").tree_id.tolist()
    wanted = {t: tree_version(home, t) for t in sorted(trees)}
    stale = []
    for t, version in wanted.items():
        experts = TreeExperts(home, t)
        built = experts.meta().version if experts.exists() else None
        if built != version:
            stale.append(t)
    return StalePlan(wanted, stale)
