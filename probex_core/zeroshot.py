"""Zero-shot ProbeX for one Model Tree: name classes a model was trained on, never seen in training.

The expert maps a layer's weights into the text-embedding space (SCIENCE.md §1, zero-shot
head): it is trained with cross-entropy over the *training* classes' prompt texts, and then
scored against the texts of held-out classes that no training model saw. A model counts as
correct when its top-scored candidate text is one of its classes.

Everything here works on tensors and class-name lists; reading layers from a hub is the
caller's job (the pipeline's layer stacks, or a test reading zoo repos), so this module stays
independent of where weights live. The encoder is recorded with every expert
(`ZeroShotExpert.encoder_name`): text vectors of another encoder are meaningless to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from probex_core.metrics import topk_chance
from probex_core.models import ModelConfig, ProbeXConfig, TextHeadConfig, WeightModel, build_model
from probex_core.text import DEFAULT_TEMPLATE, TextEncoder, class_prompts
from probex_core.train import TrainConfig, TrainResult, train_expert, zero_shot_scores

Split = tuple[torch.Tensor, Sequence[Sequence[str]]]  # (X (N, d_H, d_W), classes per model)


@dataclass(frozen=True)
class ZeroShotConfig:
    """How one zero-shot expert is built and trained."""

    # ProbeX is the paper's zero-shot model; small trees need small ranks
    model: ModelConfig = ProbeXConfig(r_U=32, r_V=32, r_T=128)
    text_head: TextHeadConfig = TextHeadConfig()
    template: str = DEFAULT_TEMPLATE  # class prompt, "a photo of a {name}" as in the paper
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(objective="zeroshot", epochs=200, val_every=10)
    )  # the paper's zero-shot schedule: lr 2e-3, 200 epochs
    seed: int = 0  # model initialisation (batch order is train.seed)


@dataclass
class ZeroShotExpert:
    """A trained zero-shot expert plus what is needed to use it on new class names."""

    model: WeightModel
    encoder_name: str  # TextEncoder.name the expert was trained with
    template: str  # prompt template the class texts were built with
    train_classes: list[str]  # classes whose texts the loss saw
    result: TrainResult  # best-validation checkpoint and history

    def scores(self, X: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Cosine logits (N, C) of models X against C text embeddings."""
        return zero_shot_scores(self.model, X, texts)


def multi_hot(classes: Sequence[Sequence[str]], names: Sequence[str]) -> torch.Tensor:
    """(N, len(names)) 0/1 targets; classes outside `names` are ignored."""
    col = {n: j for j, n in enumerate(names)}
    Y = torch.zeros(len(classes), len(names))
    for i, cs in enumerate(classes):
        for c in cs:
            if c in col:
                Y[i, col[c]] = 1.0
    return Y


def class_lists(Y: torch.Tensor, names: Sequence[str]) -> list[list[str]]:
    """The inverse of `multi_hot`: each row's class names."""
    return [[names[j] for j in torch.nonzero(y > 0.5).flatten().tolist()] for y in Y]


def cosine_scores(embeddings: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(N, C) cosines of models' text-space embeddings (unit rows, `text_embedding`) with C
    class texts: what every zero-shot answer, held-out score and search ranks by."""
    return embeddings.float() @ torch.nn.functional.normalize(texts.float(), dim=-1).T


def train_zero_shot_expert(
    train: Split,
    val: Split,
    encoder: TextEncoder,
    cfg: ZeroShotConfig = ZeroShotConfig(),
    init: Mapping[str, torch.Tensor] | None = None,
) -> ZeroShotExpert:
    """Train on `train` models with their classes' texts; keep the best checkpoint on `val`.
    `init`: weights to start from (e.g. a trained classifier's encoder), loaded non-strictly.

    Label columns are every class in train ∪ val; `train_expert` computes the loss over the
    columns with a positive in train only, so classes that appear only in `val` (held-out ones,
    when val is a held-out split) never reach the loss. `val` decides the checkpoint: documented
    val models (in-distribution), or a held-out split for the paper's held-out checkpoint.
    """
    (X_tr, c_tr), (X_va, c_va) = train, val
    names = sorted({c for cs in c_tr for c in cs} | {c for cs in c_va for c in cs})
    texts = encoder.encode(class_prompts(names, cfg.template))
    if texts.shape[1] != encoder.dim:
        raise ValueError(f"{encoder.name} returned width {texts.shape[1]}, expected {encoder.dim}")
    d_H, d_W = X_tr.shape[1:]
    model = build_model(
        cfg.model,
        d_H,
        d_W,
        n_classes=0,
        text_dim=encoder.dim,
        seed=cfg.seed,
        text_head=cfg.text_head,
    )
    if init is not None:
        model.load_state_dict(dict(init), strict=False)
    cfg_train = replace(cfg.train, objective="zeroshot")
    result = train_expert(
        model,
        (X_tr, multi_hot(c_tr, names)),
        (X_va, multi_hot(c_va, names)),
        cfg_train,
        text_embeddings=texts,
        class_names=names,
    )
    seen = sorted({c for cs in c_tr for c in cs})
    return ZeroShotExpert(result.model, encoder.name, cfg.template, seen, result)


def evaluate_zero_shot(
    expert: ZeroShotExpert,
    data: Split,
    candidates: Sequence[str],
    encoder: TextEncoder,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracy of models `data` among the `candidates`' texts, with chance beside it.

    Models with none of their classes among the candidates are left out. Chance is exact per
    model (a model with p positives among C candidates: 1 − C(C−p, k)/C(C, k)), averaged;
    for one class per model it is k/C.
    """
    if encoder.name != expert.encoder_name:
        raise ValueError(f"expert was trained with {expert.encoder_name}, not {encoder.name}")
    X, classes = data
    cand = list(candidates)
    Y = multi_hot(classes, cand).numpy()
    keep = Y.sum(1) > 0
    out: dict[str, float] = {"n_models": int(keep.sum()), "n_candidates": len(cand)}
    if not keep.any():
        return out
    texts = encoder.encode(class_prompts(cand, expert.template))
    scores = expert.scores(X[torch.from_numpy(keep)], texts).numpy()
    Y = Y[keep] > 0.5
    order = np.argsort(-scores, axis=1, kind="stable")
    n_pos = Y.sum(1)
    for k in ks:
        hit = np.take_along_axis(Y, order[:, :k], axis=1).any(axis=1)
        out[f"top{k}"] = float(hit.mean())
        out[f"chance_top{k}"] = float(topk_chance(n_pos, len(cand), k).mean())
    return out


def _shuffled(classes: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
    """The same label lists, permuted across models: destroys the weights ↔ text link only."""
    perm = np.random.default_rng(seed).permutation(len(classes))
    return [list(classes[i]) for i in perm]


def zero_shot_report(
    splits: Mapping[str, Split],
    heldout_classes: Sequence[str],
    encoder: TextEncoder,
    cfg: ZeroShotConfig = ZeroShotConfig(),
    shuffled_control: bool = True,
) -> dict[str, object]:
    """Train one tree's expert and report held-out, in-distribution and control accuracy.

    `splits` holds "train" and "val" (documented) and whichever of "test", "val_holdout",
    "test_holdout" exist. The checkpoint is chosen on "val" only — no held-out label is
    touched before evaluation — so both holdout splits can be scored:
    - heldout: models of the holdout splits, among the held-out classes' texts;
    - in_distribution: "test" models, among the texts of every non-held-out class that occurs
      in train/val/test (a one-class-per-model tree's test models often carry classes the
      expert never trained on, so "the training classes" alone would leave nothing to score);
    - shuffled: the same expert trained with train labels permuted across models — the weights
      no longer tell the classes, so it must fall to chance.
    """
    expert = train_zero_shot_expert(splits["train"], splits["val"], encoder, cfg)
    held = [s for s in ("val_holdout", "test_holdout") if s in splits]
    held_data = _concat([splits[s] for s in held]) if held else None
    report: dict[str, object] = {
        "encoder": encoder.name,
        "template": cfg.template,
        "n_train": len(splits["train"][1]),
        "n_train_classes": len(expert.train_classes),
        "best_epoch": expert.result.best_epoch,
        "val_top1": expert.result.best_metric,
        "heldout_splits": held,
    }
    if held_data is not None:
        report["heldout"] = evaluate_zero_shot(expert, held_data, heldout_classes, encoder)
    if "test" in splits:
        excluded = set(heldout_classes)
        seen = sorted(
            {c for s in ("train", "val", "test") for cs in splits[s][1] for c in cs} - excluded
        )
        report["in_distribution"] = evaluate_zero_shot(expert, splits["test"], seen, encoder)
    if shuffled_control and held_data is not None:
        X_tr, c_tr = splits["train"]
        control = train_zero_shot_expert(
            (X_tr, _shuffled(c_tr, cfg.seed + 1)), splits["val"], encoder, cfg
        )
        report["shuffled"] = evaluate_zero_shot(control, held_data, heldout_classes, encoder)
    return report


def _concat(parts: Sequence[Split]) -> Split:
    X = torch.cat([p[0] for p in parts])
    classes = [list(c) for p in parts for c in p[1]]
    return X, classes
