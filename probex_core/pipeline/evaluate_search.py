"""Text search scored against ground truth: what `probex search` returns for class names."""

from __future__ import annotations

import numpy as np
import torch

from probex_core.catalog import Home, query, read_table
from probex_core.pipeline.query import TextSearch
from probex_core.text import class_prompts
from probex_core.zeroshot import cosine_scores


def search_rows(rows, home: Home, ids: list[str], emb: torch.Tensor, truth) -> None:
    """precision@10 of `probex search`'s own ranking (`TextSearch`) and of plain cosine, one
    query per class name: held-out names over every tree's models (`ids`, embeddings `emb`;
    no expert knows those names), and the names the experts know over the undocumented
    models (a card answers for the documented ones). For held-out names also a ranking that
    ignores the text (`unknown_classes`, most first): what finding "a model that holds
    something its expert does not know" alone scores. `rows.add` takes each score."""
    search = TextSearch(home)
    repos = read_table(home, "repos").set_index("repo_id")
    documented = repos.documented
    undocumented = np.array([not bool(documented.get(r, False)) for r in ids])
    known = sorted({c for cs in search.classes.values() for c in cs} - set(truth.heldout))
    for names, pool, metric, split in (
        (truth.heldout, np.ones(len(ids), bool), "heldout_precision_at_10", "holdout"),
        (known, undocumented, "seen_precision_at_10", "undocumented"),
    ):
        if not names or not pool.any():
            continue
        has = np.array([[c in truth.classes(r) for r in ids] for c in names])[:, pool]
        pooled = [r for r, keep in zip(ids, pool, strict=True) if keep]
        at = {r: j for j, r in enumerate(pooled)}
        cos = cosine_scores(emb[pool], search.encoder.encode(class_prompts(names))).numpy().T
        ranked = {
            "search": [
                [at[r] for r in search.search(c, k=None).repo_id if r in at][:10] for c in names
            ],
            "search-cosine": np.argsort(-cos, axis=1, kind="stable")[:, :10],
        }
        if metric == "heldout_precision_at_10":
            blind = np.argsort(-unknown_classes(home, pooled), kind="stable")[:10]
            ranked["text-blind"] = [blind] * len(names)
        for method, top in ranked.items():
            per_query = np.array([has[q, t].mean() for q, t in enumerate(top)])
            se = float(per_query.std(ddof=1) / np.sqrt(len(names))) if len(names) > 1 else None
            rows.add("ALL", method, metric, per_query.mean(), has.mean(), len(names), split, se)


def unknown_classes(home: Home, ids: list[str]) -> np.ndarray:
    """Per model, how many of its classes its tree's classifier does not find (`unknown_mass`,
    stored by `predict`: the usual class count of the tree's documented models minus the
    summed probabilities; 1 − the top one with one class per model). NaN for a model without
    an expert."""
    stored = query(home, "SELECT repo_id, unknown_mass FROM embeddings").set_index("repo_id")
    return stored.unknown_mass.reindex(ids).to_numpy(dtype=float)
