"""The catalog: Parquet tables under one home, and a DuckDB file of views over them.

Why Parquet plus views: DuckDB allows one read-write process per database file, and Dagster's
multiprocess executor runs each step in its own process. So no step writes the DuckDB file
while partitions run: every step writes its own Parquet file (atomically: temp + rename), and
`catalog.duckdb` holds only views over those files. The views are (re)created by
`refresh_views`, called from single, non-partitioned steps and by the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd

from probex_core import storage
from probex_core.files import atomic_path, remove
from probex_core.schemas import TABLES, empty_select

SQL_DIR = Path(str(resources.files("sql")))


@dataclass(frozen=True)
class Home:
    """Everything probex writes lives under one home (`PROBEX_HOME`, default ./.probex): a
    directory, or an fsspec URL worked on in a local mirror (`probex_core.storage`)."""

    root: Path  # the home directory itself (for a URL: its local mirror)
    url: str | None = None  # the home's URL, when it is not a local directory

    def __post_init__(self) -> None:
        spec = str(self.url or self.root)
        if storage.is_remote(spec):
            object.__setattr__(self, "url", spec)
            object.__setattr__(self, "root", storage.open_remote(spec))
        else:
            object.__setattr__(self, "root", Path(self.root).resolve())

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Home:
        from probex_core.env import home_root

        return cls(home_root(root))

    @property
    def spec(self) -> str:
        """What names this home to another process or machine: its URL, else its path."""
        return self.url or str(self.root)

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def cards(self) -> Path:
        """Generated model cards: `<org>/<name>/README.md`."""
        return self.root / "cards"

    def table_dir(self, table: str) -> Path:
        return self.tables / table

    def layer_dir(self, tree_id: str) -> Path:
        return self.artifacts / "layers" / tree_id

    def expert_dir(self, tree_id: str) -> Path:
        return self.artifacts / "experts" / tree_id


def load_sql(name: str) -> str:
    """The text of `sql/<name>.sql`: one statement or view per file."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path}")
    return path.read_text()


def write_table(home: Home, table: str, df: pd.DataFrame, part: str = "all") -> Path:
    """Write one Parquet part of a table atomically; a table is the union of its parts.

    Partitioned steps write their own part (e.g. one per tree), so they never contend.
    """
    out = home.table_dir(table) / f"{part}.parquet"
    with atomic_path(out) as tmp:
        con = duckdb.connect()  # in-memory: no lock on the catalog file
        con.register("frame", df)
        con.execute(f"COPY (SELECT * FROM frame) TO '{_quote(tmp)}' (FORMAT parquet)")
        con.close()
    return out


def sweep_partial_files(home: Home) -> list[Path]:
    """Delete the temp files a killed run left behind (every atomic write goes through a
    `*.tmp` beside its target); return them. Call it only when no step is writing: before a
    run starts, never while partitions run."""
    swept = []
    for top in (home.tables, home.artifacts, home.cards):
        if top.is_dir():
            for p in sorted(top.rglob("*.tmp")):
                if p.is_file():
                    p.unlink()
                    swept.append(p)
    return swept


def remove_table_parts(home: Home, table: str, keep: Iterable[str]) -> None:
    """Drop parts of a table whose key is no longer wanted (e.g. a tree that disappeared)."""
    keep = set(keep)
    for p in home.table_dir(table).glob("*.parquet"):
        if p.stem not in keep:
            remove(p)


def read_table(home: Home, table: str) -> pd.DataFrame:
    parts = sorted(home.table_dir(table).glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"table {table!r} has no data under {home.table_dir(table)}")
    con = duckdb.connect()
    try:
        return con.execute(
            "SELECT * FROM read_parquet(?, union_by_name = true)", [[str(p) for p in parts]]
        ).df()
    finally:
        con.close()


def _quote(path: str | Path) -> str:
    return str(path).replace("'", "''")


# Base tables the views are built on: name → Parquet table directory.
BASE_TABLES = tuple(TABLES)  # every table's columns: probex_core.schemas

# User-facing views, each defined in sql/view_<name>.sql over the base tables.
VIEWS = (
    "models",
    "trees",
    "experts",
    "predictions",
    "evaluations",
    "rejected_repos",
    "embeddings",
    "cards",
)


def refresh_views(home: Home) -> None:
    """(Re)create the catalog: one raw view per base table with data, then the user views.

    Only single-process steps call this; it takes DuckDB's write lock for milliseconds.
    """
    home.root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(home.catalog_path))
    try:
        for table in BASE_TABLES:
            parts = sorted(home.table_dir(table).glob("*.parquet"))
            empty = empty_select(table)
            if parts:
                # Parts written by older code may lack columns added since: the union with the
                # empty schema gives them as NULL, so the views still bind until a rebuild.
                files = ", ".join(f"'{_quote(p)}'" for p in parts)
                con.execute(
                    f"CREATE OR REPLACE VIEW raw_{table} AS "
                    f"SELECT * FROM read_parquet([{files}], union_by_name = true) "
                    f"UNION ALL BY NAME ({empty})"
                )
            else:
                con.execute(f"CREATE OR REPLACE VIEW raw_{table} AS {empty}")
        for view in VIEWS:
            con.execute(load_sql(f"view_{view}"))
    finally:
        con.close()


def query(home: Home, sql: str, params: list | None = None) -> pd.DataFrame:
    """Run one read-only query on the catalog."""
    if not home.catalog_path.exists():
        raise FileNotFoundError(
            f"no catalog at {home.catalog_path}; run `probex run` first (PROBEX_HOME={home.root})"
        )
    con = duckdb.connect(str(home.catalog_path), read_only=True)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()
