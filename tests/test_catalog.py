import json

import duckdb
import pandas as pd
import pytest

from probex_core.catalog import VIEWS, Home, query, read_table, refresh_views, write_table


def test_views_exist_and_are_empty_before_any_data(tmp_path):
    home = Home(tmp_path)
    refresh_views(home)
    for view in VIEWS:
        assert len(query(home, f"SELECT * FROM {view}")) == 0
    cols = query(home, "SELECT * FROM rejected_repos").columns
    assert {"repo_id", "reason"} <= set(cols)


def test_parts_union_into_views_and_catalog_opens_read_only(tmp_path):
    home = Home(tmp_path)
    for tree in ("t1", "t2"):
        write_table(
            home,
            "tree_summary",
            pd.DataFrame(
                {
                    "tree_id": [tree],
                    "root_repo": [f"org/{tree}"],
                    "kind": ["full"],
                    "signature": ["s"],
                    "size": [3],
                    "n_documented": [2],
                    "fingerprint": ["f"],
                }
            ),
            part=tree,
        )
    refresh_views(home)
    df = query(home, "SELECT tree_id, n_undocumented FROM trees ORDER BY tree_id")
    assert df.tree_id.tolist() == ["t1", "t2"] and df.n_undocumented.tolist() == [1, 1]
    assert len(read_table(home, "tree_summary")) == 2
    with pytest.raises(duckdb.Error, match="read-only"):
        query(home, "CREATE TABLE x (a INT)")


def test_query_without_catalog_names_the_home(tmp_path):
    with pytest.raises(FileNotFoundError, match="probex run"):
        query(Home(tmp_path / "nowhere"), "SELECT 1")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    home = Home(tmp_path)
    write_table(home, "repos", pd.DataFrame({"repo_id": ["a/b"]}))
    files = sorted(p.name for p in home.table_dir("repos").iterdir())
    assert files == ["all.parquet"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    from probex_core.files import atomic_path, atomic_write_json

    target = tmp_path / "deep" / "state.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed half-way")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_parts_from_older_code_get_new_columns_as_null(tmp_path):
    """A model_embeddings part written before the search calibration existed still binds the
    views (calibration NULL), and search ranks those rows by plain cosine."""
    from bench.index import SEARCH_MODELS_SQL

    home = Home(tmp_path)
    old = pd.DataFrame(
        {
            "repo_id": ["org/a", "org/b"],
            "tree_id": ["t1", "t1"],
            "encoder": ["enc", "enc"],
            "embedding": [[1.0, 0.0], [0.6, 0.8]],
        }
    )
    write_table(home, "model_embeddings", old)
    refresh_views(home)
    df = query(home, "SELECT repo_id, logit_scale, vocab_lse FROM embeddings ORDER BY repo_id")
    assert df.repo_id.tolist() == ["org/a", "org/b"]
    assert df.logit_scale.isna().all() and df.vocab_lse.isna().all()
    hits = query(home, SEARCH_MODELS_SQL, [[0.0, 1.0], "enc", None, None, [], 5])
    assert hits.repo_id.tolist() == ["org/b", "org/a"]
    assert hits.score.tolist() == pytest.approx([0.8, 0.0], abs=1e-6)
