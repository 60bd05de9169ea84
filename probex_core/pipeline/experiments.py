"""The report's experiments, trained on demand (`probex report --experiments`): each on every
trained tree's own layer and train/val split, as its experts were, and scored on the tree's
undocumented test models. Rows go to the `report_experiments` table the report reads.

- Probes ablation: ProbeX warm-started from the ridge read-out (as the pipeline trains it)
  with r_U ∈ {1, 8, 32, 128} at the experts' r_T, and r_T ∈ {16, 128, 512} at their r_U.
- Multi-view ProbeX (first- and second-order views from both sides of the layer, random
  init) at the experts' r_T, beside the tree's ProbeX.
- One shared ProbeX across all trees against one expert per tree: the trees' layers
  zero-padded to the largest shape and pooled, one class list (the union), the same
  settings; each tree scored on its own classes.
- A cross-tree weight-space learner in the spirit of MultiZoo-SANE (`models/sane.py`): one
  transformer over every tree's layer, tokenised row-wise, trained with normalised
  reconstruction and a supervised head; scored per tree by that head and by a ridge read-out
  of its frozen embeddings (the linear-probe head).
- The official ProbeX protocol (the paper's ranks, random init, the weights as the hub
  stores them, the official optimiser and validation schedule) beside the pipeline's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from probex_core.catalog import Home, query, refresh_views, write_table
from probex_core.env import zoo_manifest_path
from probex_core.errors import UserError
from probex_core.hub import describe_hub, make_source
from probex_core.metrics import per_class_accuracy, topk_accuracy
from probex_core.models import MultiViewConfig, ProbeXConfig, build_model, count_parameters
from probex_core.models.sane import LayerSet, Sane, SaneConfig, embed, tokenise, train_sane
from probex_core.pipeline.common import ExpertSettings, Progress, StepReport
from probex_core.pipeline.crawl import load_records
from probex_core.pipeline.evaluate import load_truth
from probex_core.pipeline.labels import majority_chance, tree_labels
from probex_core.pipeline.layers import member_layers
from probex_core.pipeline.query import last_run_hub
from probex_core.pipeline.starts import probex_starts, warm_probex
from probex_core.ridge import fit_ridge
from probex_core.schemas import frame
from probex_core.store import TreeExperts, TreeLayers
from probex_core.sweeps import pad_to
from probex_core.train import TensorData, TrainConfig, predict_proba, train_expert
from probex_core.zeroshot import multi_hot

PROBES = (1, 8, 32, 128)
MULTIVIEW_PROBES = 16  # per view; four views
WIDTHS = (16, 128, 512)
# r_U, r_V, r_T of a ProbeX with about 20× fewer parameters than Dense on a 64×128 layer of 80
# classes (the paper's ratio; 30 k against 655 k): the best of seven shapes tried near 20× on
# the default zoo (2026-12-01)
BUDGET = (8, 32, 80)


@dataclass
class _Tree:
    """One trained tree's data for an experiment: its layer's train/val/test models."""

    tree_id: str
    classes: list[str]
    single_label: bool
    train: TensorData
    val: TensorData
    test_X: torch.Tensor
    test_Y: torch.Tensor  # multi-hot over `classes`
    chance: float
    layer: str
    ids: dict[str, list[str]]  # repo ids of the train, val and test models, in order


def run_experiments(
    home: Home, truth: dict[str, dict], settings: ExpertSettings, progress: Progress | None = None
) -> StepReport:
    """Every experiment on every trained tree with test models; `truth` maps repo id →
    {split, training_classes} (the test models' ground truth)."""
    say = progress or (lambda line: None)
    trees = [t for t in (_tree(home, tid, truth) for tid in _trained(home)) if t is not None]
    rows: list[dict] = []
    for tree in trees:
        say(f"experiments: probes ablation and multi-view ProbeX on {tree.tree_id}")
        rows += _ablation(tree, settings)
        rows.append(_multiview(tree, settings))
    if len(trees) > 1:
        say(f"experiments: one shared ProbeX across {len(trees)} trees")
        rows += _shared(trees, settings)
    if trees:
        say(f"experiments: a SANE-style learner across {len(trees)} trees")
        rows += _sane(trees, SaneConfig(), settings.seed)
    raw, why = _raw_reader(home)
    for tree in trees if raw else []:
        say(f"experiments: the official ProbeX protocol on {tree.tree_id}")
        rows.append(_official(tree, raw, settings))
    if trees and not raw:
        say(f"experiments: the official protocol is not run: the hub is not readable ({why})")
    df = frame(rows, "report_experiments")
    write_table(home, "report_experiments", df)
    refresh_views(home)
    return StepReport(summary={"rows": len(df), "trees": len(trees)}, tables={"experiments": df})


def _trained(home: Home) -> list[str]:
    trees = query(home, "SELECT tree_id FROM trees WHERE expert_status = 'trained'")
    return sorted(trees.tree_id)


def _tree(home: Home, tree_id: str, truth: dict[str, dict]) -> _Tree | None:
    meta = TreeExperts(home, tree_id).meta()
    layers = TreeLayers(home, tree_id)
    ids = layers.index()["repo_ids"]
    X = layers.read(meta.layer)
    classes, rows, Y = tree_labels(home, ids)
    at = {ids[r]: k for k, r in enumerate(rows)}
    tr = [at[r] for r in meta.train_repos]
    va = [at[r] for r in meta.val_repos]
    test = [i for i, r in enumerate(ids) if truth.get(r, {}).get("split") == "test"]
    if not test or list(meta.classes) != classes:
        return None
    Yt = multi_hot([truth[ids[i]].get("training_classes", []) for i in test], classes)
    return _Tree(
        tree_id,
        classes,
        meta.single_label,
        TensorData(X[[rows[k] for k in tr]], Y[tr]),
        TensorData(X[[rows[k] for k in va]], Y[va]),
        X[test],
        Yt,
        1 / len(classes) if meta.single_label else majority_chance(Y[tr], Yt),
        meta.layer,
        {
            "train": list(meta.train_repos),
            "val": list(meta.val_repos),
            "test": [ids[i] for i in test],
        },
    )


def _score(tree: _Tree, probs: np.ndarray) -> tuple[str, float]:
    return _score_split(tree, probs, tree.test_Y)


def _score_split(tree: _Tree, probs: np.ndarray, Y: torch.Tensor) -> tuple[str, float]:
    Yt = Y.numpy()
    if tree.single_label:
        return "top1", topk_accuracy(probs, Yt, 1)
    return "per_class_accuracy", per_class_accuracy(Yt, probs)


def _proba(model, X: torch.Tensor) -> np.ndarray:
    return predict_proba(model, X).numpy()


def _timed(fn, *args) -> tuple[np.ndarray, float]:
    """(fn(*args), its wall seconds): inference on a tree's test models."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _row(
    tree: _Tree,
    experiment: str,
    setting: str,
    model,
    res,
    predicted: tuple[np.ndarray, float],
    extra_params: int = 0,
) -> dict:
    """One result; `predicted` = (test probabilities, seconds the inference took)."""
    probs, seconds = predicted
    metric, value = _score(tree, probs)
    return {
        "tree_id": tree.tree_id,
        "experiment": experiment,
        "setting": setting,
        "metric": metric,
        "value": value,
        "chance": tree.chance,
        "params": count_parameters(model) + extra_params,
        "epoch_seconds": res.epoch_seconds,
        "n": len(tree.test_X),
        "models_per_second": len(tree.test_X) / max(seconds, 1e-9),
    }


def _ablation(tree: _Tree, settings: ExpertSettings) -> list[dict]:
    cfg = settings.train_config("single" if tree.single_label else "classify")
    v = settings.r_V
    grid = [(r, v, settings.r_T) for r in PROBES] + [(settings.r_U, v, w) for w in WIDTHS]
    ridge = fit_ridge(tree.train, tree.val, single=tree.single_label)  # one warm start for all
    rows = []
    for r_U, r_V, r_T in dict.fromkeys([*grid, BUDGET]):  # each setting once, in order
        s = replace(settings, r_U=r_U, r_V=r_V, r_T=r_T, class_rank=0)  # the shared ProbeX
        res = probex_starts(tree.train, tree.val, len(tree.classes), cfg, s, tree.single_label,
                            ridge)["probex"]  # fmt: skip
        predicted = _timed(_proba, res.model, tree.test_X)
        name = f"r_U={r_U} r_T={r_T}" if r_V == v else f"r_U={r_U} r_V={r_V} r_T={r_T}"
        rows.append(_row(tree, "probes", name, res.model, res, predicted))
    return rows


def _multiview(tree: _Tree, settings: ExpertSettings) -> dict:
    cfg = settings.train_config("single" if tree.single_label else "classify")
    config = MultiViewConfig(r=MULTIVIEW_PROBES, proj_dim=32, r_T=settings.r_T)
    d_H, d_W = tree.train.shape
    model = build_model(config, d_H, d_W, len(tree.classes), seed=settings.seed)
    res = train_expert(model, tree.train, tree.val, cfg)
    predicted = _timed(_proba, res.model, tree.test_X)
    setting = f"r={config.r} proj_dim={config.proj_dim} r_T={config.r_T}"
    return _row(tree, "multiview", setting, res.model, res, predicted)


def _shared(trees: list[_Tree], settings: ExpertSettings) -> list[dict]:
    """One ProbeX over every tree's models (padded, pooled, union classes), scored per tree
    on that tree's own classes."""
    classes = sorted({c for t in trees for c in t.classes})
    shape = (
        max(t.train.X.shape[1] for t in trees),
        max(t.train.X.shape[2] for t in trees),
    )

    def pool(split: str) -> TensorData:
        parts = [getattr(t, split) for t in trees]
        X = torch.cat([pad_to(p.X, shape) for p in parts])
        Y = torch.cat([_widen(p.Y, t.classes, classes) for p, t in zip(parts, trees, strict=True)])
        return TensorData(X, Y)

    train, val = pool("train"), pool("val")
    cfg = settings.train_config("classify")
    _, res = warm_probex(train, val, len(classes), cfg, settings, False)
    del train, val
    rows = []
    for tree in trees:
        cols = [classes.index(c) for c in tree.classes]
        probs, seconds = _timed(_proba, res.model, pad_to(tree.test_X, shape))
        setting = f"one ProbeX, {len(trees)} trees"
        rows.append(_row(tree, "shared", setting, res.model, res, (probs[:, cols], seconds)))
    return rows


def _sane(trees: list[_Tree], cfg: SaneConfig, seed: int) -> list[dict]:
    """One SANE-style learner over every tree (each tree's layer its own layer encoding);
    per tree, its head's scores and a ridge read-out of its frozen embeddings."""
    classes = sorted({c for t in trees for c in t.classes})

    def layer_set(k: int, tree: _Tree, X: torch.Tensor, Y: torch.Tensor) -> LayerSet:
        tokens, rows, chunks, valid = tokenise(X, cfg.token)
        cols = torch.tensor([classes.index(c) for c in tree.classes])
        return LayerSet(k, tokens, rows, chunks, valid, _widen(Y, tree.classes, classes), cols,
                        tree.single_label)  # fmt: skip

    splits = {
        name: [layer_set(k, t, *getter(t)) for k, t in enumerate(trees)]
        for name, getter in (
            ("train", lambda t: (t.train.X, t.train.Y)),
            ("val", lambda t: (t.val.X, t.val.Y)),
            ("test", lambda t: (t.test_X, t.test_Y)),
        )
    }

    def score_val(model: Sane) -> float:
        return float(np.mean([_score_split(t, _sane_head(model, d), t.val.Y)[1] for t, d in zip(
            trees, splits["val"], strict=True)]))  # fmt: skip

    res = train_sane(splits["train"], score_val, cfg, len(classes), seed)
    rows = []
    setting = f"token={cfg.token} window={cfg.window} d={cfg.d_model} depth={cfg.depth}"
    for k, tree in enumerate(trees):
        test = splits["test"][k]
        predicted = _timed(_sane_head, res.model, test)
        rows.append(_row(tree, "sane", setting + " head", res.model, res, predicted))
        seen = {s: embed(res.model, splits[s][k]) for s in ("train", "val")}  # once per tree
        for which, name in ((0, "ridge probe (mean)"), (2, "ridge probe (codes)")):
            emb = {s: out[which][:, None, :] for s, out in seen.items()}
            probe = fit_ridge(TensorData(emb["train"], tree.train.Y), TensorData(emb["val"],
                              tree.val.Y), single=tree.single_label)  # fmt: skip
            predicted = _timed(_sane_probe, res.model, probe.model, test, which)
            rows.append(_row(tree, "sane", f"{setting} {name}", res.model, res, predicted,
                             count_parameters(probe.model)))  # fmt: skip
    return rows


def _sane_head(model: Sane, data: LayerSet) -> np.ndarray:
    return torch.sigmoid(embed(model, data)[1][:, data.cols]).numpy()


def _sane_probe(model: Sane, probe, data: LayerSet, which: int) -> np.ndarray:
    """A ridge read-out of the learner's embedding (0: mean encoding, 2: token codes)."""
    return _proba(probe, embed(model, data)[which][:, None, :])


def _raw_reader(home: Home):
    """(reader, None): reads a tree's layer as the hub stores it (the official code's input),
    from the source the home last crawled, through the crawled records; (None, why) when
    that hub is not readable now."""
    hub = last_run_hub(home)
    if hub is None:
        return None, f"no run.json in {home.root} names the hub"
    try:
        source = make_source(hub)
        describe_hub(hub, source)
        records = load_records(home)
    except (UserError, FileNotFoundError) as e:
        return None, str(e)

    def read(ids: list[str], layer: str, shape: tuple[int, int]) -> torch.Tensor:
        return torch.stack([member_layers(source, records[r], {layer: shape})[layer] for r in ids])

    return read, None


def _official(tree: _Tree, raw, settings: ExpertSettings) -> dict:
    """The official ProbeX protocol on the tree's layer: the paper's ProbeX (128 probes,
    projection 128, representation 512) from random init on the weights as stored, Adam
    lr 1e-3, weight decay 1e-5, batch 128, BCE, validation every 25 epochs and the best
    checkpoint kept, for the experts' epoch budget (the official 500, capped)."""
    shape = tree.train.shape
    data = {s: raw(tree.ids[s], tree.layer, shape) for s in ("train", "val", "test")}
    cfg = TrainConfig(lr=1e-3, weight_decay=1e-5, batch_size=128, epochs=min(500, settings.epochs),
                      val_every=25, patience=None, seed=settings.seed)  # fmt: skip
    model = build_model(ProbeXConfig(), *shape, len(tree.classes), seed=settings.seed)
    res = train_expert(model, TensorData(data["train"], tree.train.Y),
                       TensorData(data["val"], tree.val.Y), cfg)  # fmt: skip
    predicted = _timed(_proba, res.model, data["test"])
    setting = f"raw weights, r_U=128 r_V=128 r_T=512, {cfg.epochs} epochs"
    return _row(tree, "official", setting, res.model, res, predicted)


def _widen(Y: torch.Tensor, cols: list[str], classes: list[str]) -> torch.Tensor:
    out = torch.zeros(len(Y), len(classes))
    out[:, [classes.index(c) for c in cols]] = Y
    return out


def run_experiments_on_home(home: Home, progress: Progress | None = None) -> StepReport:
    """`run_experiments` with the ground truth of the hub the home last ran on, and the
    settings its experts were trained with."""
    hub = last_run_hub(home)
    truth = load_truth(home, zoo_manifest_path(hub) if hub else None)
    if not truth.models:
        raise UserError(f"the hub of {home.root} has no ground truth to score experiments on")
    trained = _trained(home)
    if not trained:
        raise UserError(f"no tree of {home.root} has trained experts; run `probex run` first")
    settings = ExpertSettings(**TreeExperts(home, trained[0]).meta().settings)
    return run_experiments(home, truth.models, settings, progress)
