"""Hub-scale metadata trees from declared base_model edges only: DuckDB recursive SQL, and
networkx as its reference."""

from __future__ import annotations

import re
from collections.abc import Iterable

import networkx as nx

from probex_core.catalog import load_sql

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def trees_from_declared_edges_sql(con, table: str, out_table: str | None = None):
    """Root and depth of every repo from declared (repo_id, base_model) edges, in DuckDB.

    `table` needs columns repo_id (unique) and base_model (NULL for a root). Returns a
    DuckDB relation (repo_id, root, depth), or creates `out_table` with it and returns None.
    A table name cannot be a bound parameter, so it is validated as an identifier instead.
    """
    for name in (table, out_table):
        if name is not None and not _IDENT.match(name):
            raise ValueError(f"not a plain table name: {name!r}")
    sql = load_sql("declared_trees").format(table=table)
    if out_table is not None:
        con.execute(f"CREATE OR REPLACE TABLE {out_table} AS {sql}")
        return None
    return con.sql(sql)


def trees_from_declared_edges_networkx(
    edges: Iterable[tuple[str, str | None]],
) -> dict[str, tuple[str | None, int | None]]:
    """Baseline for the SQL rebuild: {repo_id: (root, depth)} with networkx BFS from roots."""
    pairs = list(edges)
    declared = {repo for repo, _ in pairs}
    g = nx.DiGraph()
    g.add_nodes_from(declared)
    g.add_edges_from(
        (base, repo)
        for repo, base in pairs
        if base is not None and base != repo and base in declared
    )
    out: dict[str, tuple[str | None, int | None]] = {}
    for root in [n for n in g.nodes if g.in_degree(n) == 0]:
        for n, dep in nx.single_source_shortest_path_length(g, root).items():
            out[n] = (root, dep)
    for n in declared:
        out.setdefault(n, (None, None))
    return out
