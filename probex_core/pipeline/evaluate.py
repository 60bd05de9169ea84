"""Step 6: scores against ground truth, per tree and method.

Only this step reads ground truth: a zoo's manifest, or else the labels a hub declares for
its evaluation splits (Model-J's test models carry `dataset_chosen_targets`; the crawl
withholds them from every other stage). Experts learned from documented models; they are
scored on the others: in-distribution (split "test") and held-out classes (the holdout
splits, whose classes no documented model was trained on). Tree recovery and routing are
scored only against a manifest, which alone knows the true trees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probex_core.cards import listing_scores
from probex_core.catalog import Home, read_table, refresh_views, write_table
from probex_core.metrics import (
    binomial_se,
    expected_calibration_error,
    mean_average_precision,
    per_class_accuracy,
    ranking_auc,
    representation_scores,
    set_f1,
    topk_accuracy,
    topk_chance,
)
from probex_core.pipeline.common import StepReport
from probex_core.pipeline.evaluate_search import search_rows
from probex_core.pipeline.labels import is_list, majority_chance, text_encoder, tree_labels
from probex_core.pipeline.report import build_report, write_report
from probex_core.schemas import frame
from probex_core.store import ExpertMeta, TreeExperts, TreeLayers
from probex_core.text import class_prompts
from probex_core.train import Calibration, predict_proba
from probex_core.trees import (
    ModelAssignment,
    RecoveryScores,
    TreeInfo,
    TreeRecovery,
    TruthEntry,
    score_recovery,
)
from probex_core.zeroshot import cosine_scores, multi_hot

HOLDOUT = ("val_holdout", "test_holdout")


def _recovery_from_tables(home: Home) -> TreeRecovery:
    members = read_table(home, "tree_members")
    summary = read_table(home, "tree_summary")
    models = {
        r.repo_id: ModelAssignment(
            r.repo_id,
            r.tree_id,
            None if r.parent is None or r.parent != r.parent else r.parent,
            int(r.depth),
            bool(r.is_root),
            "",
        )
        for r in members.itertuples()
    }
    trees = {
        r.tree_id: TreeInfo(r.tree_id, r.root_repo, int(r.size), r.signature, r.kind, "")
        for r in summary.itertuples()
    }
    return TreeRecovery(models, trees, [], {})


def hub_truth(home: Home) -> tuple[dict[str, dict], list[str]]:
    """Ground truth a hub declares: every model of an evaluation split with its withheld
    labels, and the held-out classes (those of the holdout splits that no documented model
    was trained on)."""
    repos = read_table(home, "repos")
    if "withheld_classes" not in repos.columns:
        return {}, []
    truth = {
        r.repo_id: {"split": r.split, "training_classes": list(r.withheld_classes)}
        for r in repos.itertuples()
        if isinstance(r.split, str) and is_list(r.withheld_classes) and len(r.withheld_classes)
    }
    seen = {c for cs in repos.training_classes if is_list(cs) for c in cs}
    held = {c for m in truth.values() if m["split"] in HOLDOUT for c in m["training_classes"]}
    return truth, sorted(held - seen)


def calibration_scores(probs: np.ndarray, Y: np.ndarray, single: bool) -> dict[str, float]:
    """How honest the probabilities are: expected calibration error, the median probability
    of each model's top class, and how often that top class is one of the model's."""
    top = probs.argmax(1)
    return {
        "expected_calibration_error": expected_calibration_error(probs, Y, single),
        "median_top_probability": float(np.median(probs.max(1))),
        "top_class_hit_rate": float((Y[np.arange(len(Y)), top] > 0).mean()),
    }


class _Rows(list):
    """The rows of `evaluation_rows`, added one metric at a time."""

    def add(self, tree, method, metric, value, chance, n, split, stderr=None) -> None:
        self.append(
            {
                "tree_id": tree,
                "method": method,
                "metric": metric,
                "value": float(value),
                "chance": None if chance is None else float(chance),
                "stderr": None if stderr is None else float(stderr),
                "n": int(n),
                "split": split,
            }
        )


@dataclass
class _Truth:
    """Ground truth: per repo its split and training classes (and tree and parent from a
    manifest), the held-out classes, where it came from, and the manifest when there is one."""

    models: dict[str, dict]
    heldout: list[str]
    source: str
    manifest: dict | None

    def classes(self, repo_id: str) -> list[str]:
        return self.models.get(repo_id, {}).get("training_classes", [])

    def split(self, repo_id: str) -> str | None:
        return self.models.get(repo_id, {}).get("split")


@dataclass
class _TreeData:
    """What scoring one tree's experts needs: its members' layer rows, its meta, its models'
    stored text-space embeddings, and which members are test and holdout models."""

    tree_id: str
    meta: ExpertMeta
    ids: list[str]
    X: torch.Tensor
    emb: torch.Tensor
    test: list[int]
    hold: list[int]


def evaluate(home: Home, manifest_path: Path | None) -> StepReport:
    """Every score against ground truth: the experts' validation rows, tree recovery and
    routing (manifest only), each tree's classifiers and zero-shot expert on test and
    held-out models, and text search for class names (`evaluate_search`)."""
    rows = _Rows()
    _validation_rows(rows, read_table(home, "expert_results"))
    truth = load_truth(home, manifest_path)
    if not truth.models:
        return _finish(home, rows, {"ground_truth": "none"})
    summary = read_table(home, "tree_summary").set_index("tree_id")
    scores = _recovery_rows(rows, home, truth, summary) if truth.manifest else None
    if truth.manifest:
        _routing_rows(rows, home, truth, summary)
    # the weight-language embeddings and search calibration `predict` stored: not recomputed
    stored = read_table(home, "model_embeddings").set_index("repo_id")
    searched: list[_TreeData] = []
    for tree_id in sorted(summary.index):
        tree = _tree_data(home, tree_id, truth, stored)
        if tree is None:
            continue
        _classifier_rows(rows, home, tree, truth)
        _zero_shot_rows(rows, home, tree, truth)
        searched.append(tree)
    if searched:
        ids = [r for tree in searched for r in tree.ids]
        search_rows(rows, home, ids, torch.cat([tree.emb for tree in searched]), truth)
    _card_rows(rows, home, truth)
    extra = {}
    if scores:
        extra = {
            "tree_ari": round(scores.ari, 4),
            "edge_accuracy": round(scores.edge_accuracy, 4),
        }
    return _finish(home, rows, {"ground_truth": truth.source, **extra})


def _finish(home: Home, rows: _Rows, summary: dict) -> StepReport:
    """Write the rows, then the results report from them (`report/report.md`); the UI gets
    the report's tables and plots."""
    df = frame(rows, "evaluation_rows")
    write_table(home, "evaluation_rows", df)
    refresh_views(home)
    results = build_report(home)
    path = write_report(home, results)
    tables = {s.title: s.table for s in results.sections if s.table is not None}
    missing = {s.title: s.note for s in results.sections if s.table is None}
    return StepReport(
        summary={**summary, "rows": len(df), "report": str(path), **missing},
        tables={"evaluations": df, **tables},
        plots=results.plots,
    )


def _validation_rows(rows: _Rows, experts) -> None:
    """What each expert scored on validation when it was trained (`expert_results`)."""
    for r in experts.itertuples():
        method = (
            r.method if r.objective == "classify" or r.method != "probex" else "probex-zeroshot"
        )
        rows.add(r.tree_id, method, r.metric, r.value, r.chance, r.n_val, "val")


def load_truth(home: Home, manifest_path: Path | None) -> _Truth:
    """A zoo's manifest when there is one, else the labels the hub declares (`hub_truth`)."""
    if manifest_path:
        manifest = json.loads(Path(manifest_path).read_text())
        models = {m["repo_id"]: m for m in manifest["models"]}
        heldout = list(manifest.get("heldout_classes", []))
        return _Truth(models, heldout, str(manifest_path), manifest)
    models, heldout = hub_truth(home)
    return _Truth(models, heldout, "hub labels of its evaluation splits", None)


def _recovery_rows(rows: _Rows, home: Home, truth: _Truth, summary) -> RecoveryScores | None:
    """Tree recovery against the manifest, hub-wide and per true tree (under the id of the
    recovered tree with the same root; the zoo's own name, e.g. "truth:mlp-a", only when no
    recovered tree has that root)."""
    scores = score_recovery(
        _recovery_from_tables(home),
        {k: TruthEntry(v["tree_id"], v.get("parent")) for k, v in truth.models.items()},
    )
    for key in ("purity", "ari", "edge_accuracy", "root_accuracy"):
        rows.add("ALL", "mother", f"tree_{key}", getattr(scores, key), None, scores.n_models, "all")
    ours = {r: t for t, r in summary.root_repo.items()}
    roots = {t["tree_id"]: t["root_repo"] for t in truth.manifest["trees"]}
    for tt, s in scores.per_tree.items():
        tree = ours.get(roots.get(tt), f"truth:{tt}")
        rows.add(tree, "mother", "tree_edge_accuracy", s.edge_accuracy, None, s.size, "all")
    return scores


def _routing_rows(rows: _Rows, home: Home, truth: _Truth, summary) -> None:
    """Per evaluation split, the share of models routed to the tree with their true root."""
    routes = read_table(home, "routes").set_index("repo_id")
    true_root = {t["tree_id"]: t["root_repo"] for t in truth.manifest["trees"]}
    for split in ("test", *HOLDOUT):
        ids = [r for r, m in truth.models.items() if m["split"] == split and r in routes.index]
        if not ids:
            continue
        ok = [
            routes.at[r, "routed_tree"] is not None
            and routes.at[r, "routed_tree"] in summary.index
            and summary.at[routes.at[r, "routed_tree"], "root_repo"]
            == true_root[truth.models[r]["tree_id"]]
            for r in ids
        ]
        rows.add("ALL", "router", "routing_accuracy", np.mean(ok), None, len(ids), split)


def _tree_data(home: Home, tree_id: str, truth: _Truth, stored) -> _TreeData | None:
    """A tree with trained experts, read for scoring; None for a tree without them."""
    experts = TreeExperts(home, tree_id)
    if not experts.exists():
        return None
    meta = experts.meta()
    if meta.skipped:
        return None
    layers = TreeLayers(home, tree_id)
    ids = layers.index()["repo_ids"]
    X = layers.read(meta.layer)
    emb = torch.from_numpy(np.stack(stored.loc[ids].embedding.to_numpy()).astype(np.float32))
    test = [i for i, r in enumerate(ids) if truth.split(r) == "test"]
    held = set(truth.heldout)
    hold = [
        i for i, r in enumerate(ids) if truth.split(r) in HOLDOUT and set(truth.classes(r)) & held
    ]
    return _TreeData(tree_id, meta, ids, X, emb, test, hold)


def _classifier_rows(rows: _Rows, home: Home, tree: _TreeData, truth: _Truth) -> None:
    """Every classifier checkpoint on the test models (per-class accuracy against the
    majority guess, mAP, set F1, top-1 for one-class trees); ProbeX's calibration; and what
    its representation (and the raw weights) support downstream."""
    if not tree.test:
        return
    meta, test, classes = tree.meta, tree.test, list(tree.meta.classes)
    _, lab_rows, Y_doc = tree_labels(home, tree.ids)
    train_repos = set(meta.train_repos)
    train_rows = [i for i in range(len(lab_rows)) if tree.ids[lab_rows[i]] in train_repos]
    Yt = multi_hot([truth.classes(tree.ids[i]) for i in test], classes).numpy()
    chance = majority_chance(Y_doc[train_rows], torch.from_numpy(Yt))
    n = len(test)
    experts = TreeExperts(home, tree.tree_id)
    for method in meta.checkpoints:
        if method.startswith("zeroshot"):
            continue
        model, _ = experts.load(method, meta)
        probs = predict_proba(model, tree.X[test]).numpy()
        rows.add(tree.tree_id, method, "per_class_accuracy", per_class_accuracy(Yt, probs),
                 chance, n, "test")  # fmt: skip
        rows.add(tree.tree_id, method, "mean_average_precision",
                 mean_average_precision(Yt, probs), None, n, "test")  # fmt: skip
        rows.add(tree.tree_id, method, "set_f1", set_f1(Yt, probs > 0.5), None, n, "test")
        if meta.single_label:
            rows.add(tree.tree_id, method, "top1", topk_accuracy(probs, Yt, 1),
                     1 / len(classes), n, "test")  # fmt: skip
    if "probex" not in meta.checkpoints:
        return
    model, _ = experts.load("probex", meta)
    single = meta.single_label
    for method, calibration in (
        ("probex", Calibration.from_meta(meta, "probex")),
        ("probex-uncalibrated", Calibration()),  # plain sigmoids, as before
    ):
        probs = predict_proba(model, tree.X[test], calibration=calibration).numpy()
        for metric, value in calibration_scores(probs, Yt, single).items():
            rows.add(tree.tree_id, method, metric, value, None, n, "test")
    with torch.no_grad():
        reps = {"probex": model.encode(tree.X).numpy(), "raw-weights": tree.X.flatten(1).numpy()}
    train_idx = [lab_rows[i] for i in train_rows]
    for method, E in reps.items():
        for metric, value, chance_ in representation_scores(
            E[train_idx], Y_doc[train_rows].numpy(), E[test], Yt, chance
        ):
            rows.add(tree.tree_id, method, metric, value, chance_, n, "test")


def _zero_shot_rows(rows: _Rows, home: Home, tree: _TreeData, truth: _Truth) -> None:
    """The zero-shot expert on test models (the tree's classes) and on holdout models (the
    held-out classes, never trained on); each zero-shot head compared where a tree has two."""
    meta, classes, spec, t = tree.meta, list(tree.meta.classes), tree.meta.encoder, tree.tree_id
    encoder = text_encoder(home, spec)
    if tree.test:
        s = cosine_scores(tree.emb[tree.test], encoder.encode(class_prompts(classes))).numpy()
        Yt = multi_hot([truth.classes(tree.ids[i]) for i in tree.test], classes).numpy()
        top1 = topk_accuracy(s, Yt, 1)
        rows.add(t, "probex-zeroshot", "zero_shot_top1", top1, Yt.sum(1).mean() / len(classes),
                 len(tree.test), "test", binomial_se(top1, len(tree.test)))  # fmt: skip
        auc, se, n_auc = ranking_auc(s, Yt)
        if n_auc:
            rows.add(t, "probex-zeroshot", "zero_shot_ranking_auc", auc, 0.5, n_auc, "test", se)
    variants = [m for m in meta.checkpoints if m.startswith("zeroshot-")]
    for name in variants if len(variants) > 1 else []:  # the zero-shot heads compared
        zs, _ = TreeExperts(home, t).load(name, meta)
        with torch.no_grad():
            v_emb = zs.text_embedding(tree.X)
        for split, idx, names in (("test", tree.test, classes), ("holdout", tree.hold,
                                                                  truth.heldout)):  # fmt: skip
            if not idx or not names:
                continue
            s = cosine_scores(v_emb[idx], encoder.encode(class_prompts(names))).numpy()
            Yv = multi_hot([truth.classes(tree.ids[i]) for i in idx], names).numpy()
            auc, se, n_auc = ranking_auc(s, Yv)
            metric = "zero_shot_ranking_auc" if split == "test" else "heldout_ranking_auc"
            if n_auc:
                rows.add(t, f"probex-{name}", metric, auc, 0.5, n_auc, split, se)
    if not (tree.hold and truth.heldout):
        return
    held, n = truth.heldout, len(tree.hold)
    s = cosine_scores(tree.emb[tree.hold], encoder.encode(class_prompts(held))).numpy()
    Yh = multi_hot([truth.classes(tree.ids[i]) for i in tree.hold], held).numpy()
    n_pos = Yh.sum(1)
    top1 = topk_accuracy(s, Yh, 1)
    rows.add(t, "probex-zeroshot", "heldout_top1", top1,
             float(topk_chance(n_pos, len(held), 1).mean()), n, "holdout",
             binomial_se(top1, n))  # fmt: skip
    auc, se, n_auc = ranking_auc(s, Yh)
    if n_auc:
        rows.add(t, "probex-zeroshot", "heldout_ranking_auc", auc, 0.5, n_auc, "holdout", se)
    rows.add(t, "probex-zeroshot", "heldout_top5", topk_accuracy(s, Yh, 5),
             float(topk_chance(n_pos, len(held), 5).mean()), n, "holdout")  # fmt: skip


def _card_rows(rows: _Rows, home: Home, truth: _Truth) -> None:
    """The classes generated model cards list, against the truth per tree and split."""
    for r in listing_scores(home, truth.split, truth.classes, ("test", *HOLDOUT)):
        rows.add(method="card", **r)
