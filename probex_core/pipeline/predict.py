"""Step 5: every member of every tree through its tree's experts: classes and embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from probex_core.catalog import Home, read_table, refresh_views, write_table
from probex_core.digest import digest
from probex_core.pipeline.common import StepReport
from probex_core.pipeline.labels import is_list, text_encoder
from probex_core.schemas import frame
from probex_core.store import TreeExperts, TreeLayers
from probex_core.text import class_prompts
from probex_core.train import Calibration, predict_proba
from probex_core.zeroshot import cosine_scores


def text_space(model, X: torch.Tensor) -> torch.Tensor:
    """A model's embedding in the shared weight-language space (L2-normalised, text width)."""
    with torch.no_grad():
        return model.text_embedding(X)


# A name no expert knows is scored at this temperature on the zero-shot expert's logit scale
# (`search_calibration`). Default zoo, seed 0, the 20 held-out names over all 3,130 models,
# ranked by ln(unknown mass) + the text's log-probability: precision@10 0.27 / 0.32 / 0.37 /
# 0.41 / 0.40 / 0.47 at 1 / 1.5 / 2 / 2.5 / 3 / 5 (the text alone at 1: 0.145), and the top 10
# of two different names share 0.02 / 0.04 / 0.06 / 0.11 / 0.15 / 0.30 of their models. The
# higher, the more every name gets the same models, those holding the most unknown classes;
# 2 is the highest tried that keeps the answers the text's own (at most 0.1 shared).
UNKNOWN_TEXT_TEMPERATURE = 2.0


@dataclass
class TreeOutputs:
    """One tree's models through its experts: `probs` (N, C) over `classes`, text-space
    embeddings `emb` (N, D) from `encoder`, the search calibration (`scale`, `offsets` (N,))
    and `unknown` (N,), the expected number of each model's classes its classifier misses."""

    repo_ids: list[str]
    classes: list[str]
    probs: np.ndarray
    emb: np.ndarray
    encoder: str
    scale: float
    offsets: np.ndarray
    unknown: np.ndarray


def search_calibration(zs, emb: np.ndarray, class_texts: torch.Tensor) -> tuple[float, np.ndarray]:
    """(logit scale s, per-model log Σ_c exp(s · cos(e, t_c))) over the tree's class texts:
    the offset that turns s · cosine into the log-probability of a text against what the
    tree knows, log σ(s · cos − o) = a softmax over its class texts and the text. s is the
    zero-shot expert's scale over `UNKNOWN_TEXT_TEMPERATURE`: a name it never saw is read
    less sharply than the class texts it was trained on."""
    s = float(zs.zero_shot.log_scale.detach().exp()) / UNKNOWN_TEXT_TEMPERATURE
    cos = cosine_scores(torch.from_numpy(emb), class_texts)
    return s, torch.logsumexp(s * cos, dim=1).numpy()


def unknown_mass(probs: np.ndarray, single_label: bool, usual: float) -> np.ndarray:
    """Per model, the expected number of its classes its tree's classifier does not find
    (≥ 0): `usual` (the class count of the tree's documented models) minus the summed
    probabilities; with one class per model (softmax), 1 − the top probability."""
    found = probs.max(axis=1) if single_label else probs.sum(axis=1)
    return np.clip((1.0 if single_label else usual) - found, 0.0, None)


def usual_class_count(repos: pd.DataFrame, repo_ids: list[str]) -> float:
    """The median class count of the documented models among `repo_ids` (`repos` indexed by
    repo_id; NaN when none lists classes)."""
    labels = repos.training_classes.reindex(repo_ids)
    counts = [len(c) for c in labels if is_list(c) and len(c)]
    return float(np.median(counts)) if counts else np.nan


def tree_outputs(home: Home, tree_id: str, repos: pd.DataFrame) -> TreeOutputs:
    """A tree's models through its experts (`repos`: the repos table indexed by repo_id)."""
    experts, layers = TreeExperts(home, tree_id), TreeLayers(home, tree_id)
    meta = experts.meta()
    if meta.skipped:
        raise FileNotFoundError(f"tree {tree_id} has no expert: {meta.skipped}")
    X = layers.read(meta.layer)
    clf, _ = experts.load("probex", meta)
    zs, zmeta = experts.load("zeroshot", meta)
    probs = predict_proba(clf, X, calibration=Calibration.from_meta(meta, "probex")).numpy()
    emb = text_space(zs, X).numpy()
    texts = text_encoder(home, meta.encoder).encode(class_prompts(list(meta.classes)))
    scale, offsets = search_calibration(zs, emb, texts)
    repo_ids = layers.index()["repo_ids"]
    usual = usual_class_count(repos, repo_ids)
    return TreeOutputs(
        repo_ids=repo_ids,
        classes=list(meta.classes),
        probs=probs,
        emb=emb,
        encoder=zmeta.get("encoder_name", meta.encoder),
        scale=scale,
        offsets=offsets,
        unknown=unknown_mass(probs, meta.single_label, usual),
    )


def predict(home: Home) -> StepReport:
    trees = read_table(home, "tree_summary").tree_id.tolist()
    repos = read_table(home, "repos").set_index("repo_id")
    preds, embs, done, missing = [], [], [], []
    for tree_id in sorted(trees):
        try:
            out = tree_outputs(home, tree_id, repos)
        except FileNotFoundError:
            missing.append(tree_id)
            continue
        order = np.argsort(-out.probs, axis=1)
        for i, rid in enumerate(out.repo_ids):
            for rank, j in enumerate(order[i], start=1):
                preds.append(
                    {
                        "repo_id": rid,
                        "tree_id": tree_id,
                        "class_name": out.classes[j],
                        "probability": float(out.probs[i, j]),
                        "rank": rank,
                    }
                )
            embs.append(
                {
                    "repo_id": rid,
                    "tree_id": tree_id,
                    "encoder": out.encoder,
                    "embedding": out.emb[i].astype(np.float32).tolist(),
                    "logit_scale": out.scale,
                    "vocab_lse": float(out.offsets[i]),
                    "unknown_mass": float(out.unknown[i]),
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
