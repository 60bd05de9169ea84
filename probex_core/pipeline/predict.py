"""Step 5: every member of every tree through its tree's experts: classes and embeddings."""

from __future__ import annotations

import numpy as np
import torch

from probex_core.catalog import Home, read_table, refresh_views, write_table
from probex_core.digest import digest
from probex_core.pipeline.common import StepReport
from probex_core.pipeline.labels import text_encoder
from probex_core.schemas import frame
from probex_core.store import TreeExperts, TreeLayers
from probex_core.text import class_prompts
from probex_core.train import Calibration, predict_proba
from probex_core.zeroshot import cosine_scores


def text_space(model, X: torch.Tensor) -> torch.Tensor:
    """A model's embedding in the shared weight-language space (L2-normalised, text width)."""
    with torch.no_grad():
        return model.text_embedding(X)


def search_calibration(zs, emb: np.ndarray, class_texts: torch.Tensor) -> tuple[float, np.ndarray]:
    """(logit scale s, per-model log Σ_c exp(s · cos(e, t_c))) over the tree's class texts:
    the offset that turns s · cosine into log-odds against what the tree knows."""
    s = float(zs.zero_shot.log_scale.detach().exp())
    cos = cosine_scores(torch.from_numpy(emb), class_texts)
    return s, torch.logsumexp(s * cos, dim=1).numpy()


def tree_outputs(
    home: Home, tree_id: str
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, str, float, np.ndarray]:
    """(repo ids, classes, probabilities (N, C), text-space embeddings (N, D), encoder,
    search scale, search offsets (N,)) of a tree."""
    experts, layers = TreeExperts(home, tree_id), TreeLayers(home, tree_id)
    meta = experts.meta()
    if meta.skipped:
        raise FileNotFoundError(f"tree {tree_id} has no expert: {meta.skipped}")
    X = layers.read(meta.layer)
    clf, _ = experts.load("probex", meta)
    zs, zmeta = experts.load("zeroshot", meta)
    probs = predict_proba(clf, X, calibration=Calibration.from_meta(meta, "probex")).numpy()
    emb = text_space(zs, X).numpy()
    encoder = zmeta.get("encoder_name", meta.encoder)
    texts = text_encoder(home, meta.encoder).encode(class_prompts(list(meta.classes)))
    scale, offsets = search_calibration(zs, emb, texts)
    return layers.index()["repo_ids"], list(meta.classes), probs, emb, encoder, scale, offsets


def predict(home: Home) -> StepReport:
    trees = read_table(home, "tree_summary").tree_id.tolist()
    preds, embs, done, missing = [], [], [], []
    for tree_id in sorted(trees):
        try:
            repo_ids, classes, probs, emb, encoder, scale, offsets = tree_outputs(home, tree_id)
        except FileNotFoundError:
            missing.append(tree_id)
            continue
        order = np.argsort(-probs, axis=1)
        for i, rid in enumerate(repo_ids):
            for rank, j in enumerate(order[i], start=1):
                preds.append(
                    {
                        "repo_id": rid,
                        "tree_id": tree_id,
                        "class_name": classes[j],
                        "probability": float(probs[i, j]),
                        "rank": rank,
                    }
                )
            embs.append(
                {
                    "repo_id": rid,
                    "tree_id": tree_id,
                    "encoder": encoder,
                    "embedding": emb[i].astype(np.float32).tolist(),
                    "logit_scale": scale,
                    "vocab_lse": float(offsets[i]),
                }
            )
        done.append(tree_id)
    pred_df = frame(preds, "predictions_long")
    write_table(home, "predictions_long", pred_df)
    write_table(home, "model_embeddings", frame(embs, "model_embeddings"))
    refresh_views(home)
    top = pred_df[pred_df["rank"] <= 3] if len(pred_df) else pred_df
    return StepReport(
        summary={
            "trees_predicted": len(done),
            "trees_without_experts": ",".join(missing) or "none",
            "models": len(embs),
            "prediction_rows": len(pred_df),
        },
        tables={"top_predictions": top.head(30)},
        data_version=digest(done, len(pred_df)),
    )
