"""Every catalog table's columns, declared once.

A step builds its rows with `frame(rows, table)` (fixed columns and pandas dtypes, so a part
with no rows is still typed Parquet); the catalog gives a table with no part yet the same
columns as an empty DuckDB view (`empty_select`), so the user views always bind.
"""

from __future__ import annotations

import pandas as pd

# column kind → (pandas dtype a frame casts to, or None to keep Python objects; DuckDB type)
KINDS: dict[str, tuple[str | None, str]] = {
    "str": ("string", "VARCHAR"),
    "bool": ("boolean", "BOOLEAN"),
    "int": ("Int64", "BIGINT"),
    "float": ("float64", "DOUBLE"),
    "str[]": (None, "VARCHAR[]"),
    "float[]": (None, "FLOAT[]"),
}

TABLES: dict[str, dict[str, str]] = {
    "repos": {
        "repo_id": "str",
        "source": "str",
        "kind": "str",
        "weights_file": "str",
        "signature": "str",
        "fingerprint": "str",
        "documented": "bool",
        "base_model": "str",
        "base_model_relation": "str",
        "training_classes": "str[]",
        "n_tensors": "int",
        "n_params": "int",
        "split": "str",
        "withheld_classes": "str[]",
    },
    # parts: "all" (crawl), "weights" (tree recovery), "layers-<tree>" (layer extraction)
    "rejected": {"repo_id": "str", "path": "str", "reason": "str", "stage": "str"},
    "tree_members": {
        "repo_id": "str",
        "tree_id": "str",
        "parent": "str",
        "depth": "int",
        "is_root": "bool",
    },
    "tree_summary": {
        "tree_id": "str",
        "root_repo": "str",
        "kind": "str",
        "signature": "str",
        "size": "int",
        "n_documented": "int",
        "fingerprint": "str",
    },
    "card_disagreements": {
        "repo_id": "str",
        "declared_base": "str",
        "recovered_parent": "str",
        "declared_in_same_tree": "bool",
    },
    "routes": {
        "repo_id": "str",
        "routed_tree": "str",
        "distance": "float",
        "margin": "float",
        "reason": "str",
    },
    "expert_results": {
        "tree_id": "str",
        "method": "str",
        "objective": "str",
        "layer": "str",
        "metric": "str",
        "value": "float",
        "chance": "float",
        "n_train": "int",
        "n_val": "int",
        "encoder": "str",
        "checkpoint": "str",
        "code_version": "str",
    },
    "layer_sweep": {"tree_id": "str", "layer": "str", "method": "str", "val_metric": "float"},
    "expert_status": {"tree_id": "str", "status": "str", "reason": "str", "layer": "str"},
    "predictions_long": {
        "repo_id": "str",
        "tree_id": "str",
        "class_name": "str",
        "probability": "float",
        "rank": "int",
    },
    "model_embeddings": {
        "repo_id": "str",
        "tree_id": "str",
        "encoder": "str",
        "embedding": "float[]",
        "logit_scale": "float",  # s: the zero-shot expert's logit scale / UNKNOWN_TEXT_TEMPERATURE
        "vocab_lse": "float",  # log Σ exp(s · cos) over the tree's class texts (search offset)
        "unknown_mass": "float",  # expected number of the model's classes its classifier misses
    },
    "evaluation_rows": {
        "tree_id": "str",
        "method": "str",
        "metric": "str",
        "value": "float",
        "chance": "float",
        "stderr": "float",  # standard error of value where it is a mean over models or queries
        "n": "int",
        "split": "str",
    },
    # one row per generated model card (`probex cards`; files under $PROBEX_HOME/cards)
    "model_cards": {
        "repo_id": "str",
        "tree_id": "str",
        "kind": "str",  # "undocumented" | "contradicted" (documented; the weights disagree)
        "status": "str",  # "predicted" | "no-expert" | "unknown-tree"
        "base_model": "str",  # the recovered parent
        "base_model_relation": "str",
        "listed_classes": "str[]",  # the classes the card lists, most likely first
        "confidence_threshold": "float",  # the tree's listing threshold (chosen on validation)
        "expert_version": "str",
        "content_digest": "str",
        "path": "str",  # under $PROBEX_HOME/cards
    },
    # `probex report --experiments`: extra models per tree, scored on its test models
    "report_experiments": {
        "tree_id": "str",
        # "probes" (ablation) | "multiview" | "shared" (one over all trees) | "sane" | "official"
        "experiment": "str",
        "setting": "str",
        "metric": "str",
        "value": "float",
        "chance": "float",
        "params": "int",
        "epoch_seconds": "float",
        "n": "int",
        "models_per_second": "float",  # inference on the tree's test models
    },
}


def columns(table: str) -> list[str]:
    return list(TABLES[table])


def frame(rows: list[dict], table: str) -> pd.DataFrame:
    """The table's rows with its fixed columns and dtypes, also when there are none."""
    schema = TABLES[table]
    df = pd.DataFrame(rows, columns=list(schema))
    for col, kind in schema.items():
        dtype = KINDS[kind][0]
        if dtype is not None:
            df[col] = df[col].astype(dtype)
    return df


def empty_select(table: str) -> str:
    """A SELECT with the table's columns and DuckDB types and no rows."""
    cols = ", ".join(f"NULL::{KINDS[k][1]} AS {c}" for c, k in TABLES[table].items())
    return f"SELECT {cols} WHERE false"
