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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from probex_core.catalog import Home, read_table, refresh_views, write_table
from probex_core.metrics import (
    expected_calibration_error,
    knn_accuracy,
    mean_average_precision,
    one_class_auc,
    per_class_accuracy,
    ranking_auc,
    retrieval,
    set_f1,
    topk_accuracy,
    topk_chance,
)
from probex_core.pipeline.common import StepReport, png
from probex_core.pipeline.experts import (
    is_list,
    load_meta,
    majority_chance,
    text_encoder,
    tree_labels,
)
from probex_core.pipeline.layers import load_layer_index
from probex_core.schemas import frame
from probex_core.text import class_prompts
from probex_core.train import Calibration, load_expert, open_layer_stack, predict_proba
from probex_core.trees import ModelAssignment, TreeInfo, TreeRecovery, TruthEntry, score_recovery

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


def _multi_hot(class_lists: list[list[str]], classes: list[str]) -> np.ndarray:
    col = {c: j for j, c in enumerate(classes)}
    Y = np.zeros((len(class_lists), len(classes)), dtype=np.float32)
    for i, cs in enumerate(class_lists):
        for c in cs:
            if c in col:
                Y[i, col[c]] = 1
    return Y


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


def evaluate(home: Home, manifest_path: Path | None) -> StepReport:
    rows: list[dict] = []

    def add(tree, method, metric, value, chance, n, split, stderr=None):
        rows.append(
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

    experts = read_table(home, "expert_results")
    for r in experts.itertuples():
        add(
            r.tree_id,
            r.method if r.objective == "classify" or r.method != "probex" else "probex-zeroshot",
            r.metric,
            r.value,
            r.chance,
            r.n_val,
            "val",
        )
    manifest = json.loads(Path(manifest_path).read_text()) if manifest_path else None
    if manifest is not None:
        truth = {m["repo_id"]: m for m in manifest["models"]}
        heldout = list(manifest.get("heldout_classes", []))
        source = str(manifest_path)
    else:
        truth, heldout = hub_truth(home)
        source = "hub labels of its evaluation splits"
    if not truth:
        df = frame(rows, "evaluation_rows")
        write_table(home, "evaluation_rows", df)
        refresh_views(home)
        return StepReport(
            summary={"ground_truth": "none", "rows": len(df)}, tables={"evaluations": df}
        )

    summary = read_table(home, "tree_summary").set_index("tree_id")
    scores = {}
    if manifest is not None:
        scores = score_recovery(
            _recovery_from_tables(home),
            {k: TruthEntry(v["tree_id"], v.get("parent")) for k, v in truth.items()},
        )
        for key in ("purity", "ari", "edge_accuracy", "root_accuracy"):
            add("ALL", "mother", f"tree_{key}", scores[key], None, scores["n_models"], "all")
        # per true tree, under the id of the recovered tree with the same root (the zoo's own
        # name, e.g. "truth:mlp-a", only when no recovered tree has that root)
        ours = {r: t for t, r in summary.root_repo.items()}
        roots = {t["tree_id"]: t["root_repo"] for t in manifest["trees"]}
        for tt, s in scores["per_tree"].items():
            tree = ours.get(roots.get(tt), f"truth:{tt}")
            add(tree, "mother", "tree_edge_accuracy", s["edge_accuracy"], None, s["size"], "all")

    routes = read_table(home, "routes").set_index("repo_id")
    true_root = {t["tree_id"]: t["root_repo"] for t in manifest["trees"]} if manifest else {}
    for split in ("test", *HOLDOUT) if manifest else ():
        ids = [r for r, m in truth.items() if m["split"] == split and r in routes.index]
        if ids:
            ok = [
                routes.at[r, "routed_tree"] is not None
                and routes.at[r, "routed_tree"] in summary.index
                and summary.at[routes.at[r, "routed_tree"], "root_repo"]
                == true_root[truth[r]["tree_id"]]
                for r in ids
            ]
            add("ALL", "router", "routing_accuracy", np.mean(ok), None, len(ids), split)

    specs: set[str] = set()
    all_emb, all_ids, all_calib = [], [], []
    # the weight-language embeddings and search calibration `predict` stored: not recomputed
    stored = read_table(home, "model_embeddings").set_index("repo_id")
    for tree_id in sorted(summary.index):
        try:
            meta = load_meta(home, tree_id)
        except FileNotFoundError:
            continue
        if meta.get("skipped"):
            continue
        index = load_layer_index(home, tree_id)
        ids = index["repo_ids"]
        with open_layer_stack(home.layer_dir(tree_id) / f"{meta['layer']}.safetensors") as stack:
            X = stack.read(slice(0, len(stack)))
        classes = meta["classes"]
        _, lab_rows, Y_doc = tree_labels(home, ids)
        train_rows = [
            i for i in range(len(lab_rows)) if ids[lab_rows[i]] in set(meta["train_repos"])
        ]
        test = [i for i, r in enumerate(ids) if truth.get(r, {}).get("split") == "test"]
        if test:
            Yt = _multi_hot([truth[ids[i]]["training_classes"] for i in test], classes)
            chance = majority_chance(Y_doc[train_rows], torch.from_numpy(Yt))
            for method, ckpt in meta["checkpoints"].items():
                if method.startswith("zeroshot"):
                    continue
                model, _ = load_expert(home.expert_dir(tree_id) / ckpt)
                probs = predict_proba(model, X[test]).numpy()
                add(
                    tree_id,
                    method,
                    "per_class_accuracy",
                    per_class_accuracy(Yt, probs),
                    chance,
                    len(test),
                    "test",
                )
                add(
                    tree_id,
                    method,
                    "mean_average_precision",
                    mean_average_precision(Yt, probs),
                    None,
                    len(test),
                    "test",
                )
                add(tree_id, method, "set_f1", set_f1(Yt, probs > 0.5), None, len(test), "test")
                if meta.get("single_label"):
                    add(
                        tree_id,
                        method,
                        "top1",
                        topk_accuracy(probs, Yt, 1),
                        1 / len(classes),
                        len(test),
                        "test",
                    )
            if "probex" in meta["checkpoints"]:
                model, _ = load_expert(home.expert_dir(tree_id) / meta["checkpoints"]["probex"])
                single = bool(meta.get("single_label"))
                for method, calibration in (
                    ("probex", Calibration.from_meta(meta, "probex")),
                    ("probex-uncalibrated", Calibration()),  # plain sigmoids, as before
                ):
                    for metric, value in calibration_scores(
                        predict_proba(model, X[test], calibration=calibration).numpy(), Yt, single
                    ).items():
                        add(tree_id, method, metric, value, None, len(test), "test")
                with torch.no_grad():
                    reps = {"probex": model.encode(X).numpy(), "raw-weights": X.flatten(1).numpy()}
                train_idx = [lab_rows[i] for i in train_rows]
                for method, E in reps.items():
                    for metric, value, chance_ in representation_scores(
                        E[train_idx], Y_doc[train_rows].numpy(), E[test], Yt, chance
                    ):
                        add(tree_id, method, metric, value, chance_, len(test), "test")

        spec = meta["encoder"]
        specs.add(spec)
        mine = stored.loc[ids]
        emb = torch.from_numpy(np.stack(mine.embedding.to_numpy()).astype(np.float32))
        all_emb.append(emb)
        all_ids.extend(ids)
        all_calib.append(mine[["logit_scale", "vocab_lse"]].to_numpy(np.float32).T)
        if test:
            T = text_encoder(home, spec).encode(class_prompts(classes))
            s = (emb[test] @ F.normalize(T, dim=-1).T).numpy()
            Yt = _multi_hot([truth[ids[i]]["training_classes"] for i in test], classes)
            top1 = topk_accuracy(s, Yt, 1)
            add(
                tree_id,
                "probex-zeroshot",
                "zero_shot_top1",
                top1,
                Yt.sum(1).mean() / len(classes),
                len(test),
                "test",
                _binomial_se(top1, len(test)),
            )
            auc, se, n_auc = ranking_auc(s, Yt)
            if n_auc:
                add(
                    tree_id, "probex-zeroshot", "zero_shot_ranking_auc", auc, 0.5, n_auc, "test", se
                )
        hold = [i for i, r in enumerate(ids) if truth.get(r, {}).get("split") in HOLDOUT]
        hold = [i for i in hold if set(truth[ids[i]]["training_classes"]) & set(heldout)]
        variants = [m for m in meta["checkpoints"] if m.startswith("zeroshot-")]
        for name in variants if len(variants) > 1 else []:  # the zero-shot heads compared
            zs, _ = load_expert(home.expert_dir(tree_id) / meta["checkpoints"][name])
            with torch.no_grad():
                v_emb = zs.text_embedding(X)
            for split, rows_, names in (("test", test, classes), ("holdout", hold, heldout)):
                if not rows_ or not names:
                    continue
                T = F.normalize(text_encoder(home, spec).encode(class_prompts(names)), dim=-1)
                Yv = _multi_hot([truth[ids[i]]["training_classes"] for i in rows_], names)
                auc, se, n_auc = ranking_auc((v_emb[rows_] @ T.T).numpy(), Yv)
                metric = "zero_shot_ranking_auc" if split == "test" else "heldout_ranking_auc"
                if n_auc:
                    add(tree_id, f"probex-{name}", metric, auc, 0.5, n_auc, split, se)
        if hold and heldout:
            T = text_encoder(home, spec).encode(class_prompts(heldout))
            s = (emb[hold] @ F.normalize(T, dim=-1).T).numpy()
            Yh = _multi_hot([truth[ids[i]]["training_classes"] for i in hold], heldout)
            n_pos = Yh.sum(1)
            chance1 = float(topk_chance(n_pos, len(heldout), 1).mean())
            top1 = topk_accuracy(s, Yh, 1)
            add(
                tree_id,
                "probex-zeroshot",
                "heldout_top1",
                top1,
                chance1,
                len(hold),
                "holdout",
                _binomial_se(top1, len(hold)),
            )
            auc, se, n_auc = ranking_auc(s, Yh)
            if n_auc:
                add(
                    tree_id,
                    "probex-zeroshot",
                    "heldout_ranking_auc",
                    auc,
                    0.5,
                    n_auc,
                    "holdout",
                    se,
                )
            add(
                tree_id,
                "probex-zeroshot",
                "heldout_top5",
                topk_accuracy(s, Yh, 5),
                float(topk_chance(n_pos, len(heldout), 5).mean()),
                len(hold),
                "holdout",
            )

    if all_emb and heldout:
        E = torch.cat(all_emb)
        spec = next(iter(specs))
        T = F.normalize(text_encoder(home, spec).encode(class_prompts(heldout)), dim=-1)
        cos = (T @ E.T).numpy()
        calib = np.concatenate(all_calib, axis=1)
        has = np.array(
            [[c in truth.get(r, {}).get("training_classes", []) for r in all_ids] for c in heldout]
        )
        # "search": the calibrated score `probex search` ranks by; "search-cosine": raw cosine
        for method, sims in (("search", calib[0] * cos - calib[1]), ("search-cosine", cos)):
            top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
            per_query = np.take_along_axis(has, top, axis=1).mean(axis=1)
            add(
                "ALL",
                method,
                "heldout_precision_at_10",
                float(per_query.mean()),
                float(has.mean()),
                len(heldout),
                "holdout",
                float(per_query.std(ddof=1) / np.sqrt(len(per_query)))
                if len(per_query) > 1
                else None,
            )

    df = frame(rows, "evaluation_rows")
    write_table(home, "evaluation_rows", df)
    refresh_views(home)
    return StepReport(
        summary={
            "ground_truth": source,
            "rows": len(df),
            **(
                {
                    "tree_ari": round(scores["ari"], 4),
                    "edge_accuracy": round(scores["edge_accuracy"], 4),
                }
                if scores
                else {}
            ),
        },
        tables={"evaluations": df},
        plots={"test accuracy per tree and method": _plot(df)}
        if (df.split == "test").any()
        else {},
    )


def _binomial_se(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n)) if n else float("nan")


def representation_scores(
    E_train: np.ndarray,
    Y_train: np.ndarray,
    E_test: np.ndarray,
    Y_test: np.ndarray,
    knn_chance: float,
    k: int = 5,
) -> list[tuple[str, float, float]]:
    """(metric, value, chance) of downstream tasks on a representation of each model.

    kNN: the training classes of a test model by the vote of its k nearest documented
    (training) models, per-class accuracy (chance: the majority guess). One-class ROC-AUC,
    per class c with ≥ k training models that learned it: those are the "normal" set, test
    models are scored by their distance to it and the AUC separates test models that learned
    c from those that did not; mean over classes (chance 0.5). Retrieval: each test model
    queries the other test models; relevant ones learned the same class (one class per
    model) or a class set with Jaccard ≥ 0.5; precision@k (chance: the relevant fraction).
    """
    out = [
        ("knn_per_class_accuracy", knn_accuracy(E_train, Y_train, E_test, Y_test, k), knn_chance)
    ]
    aucs = [
        one_class_auc(E_train[Y_train[:, c] > 0.5], E_test, Y_test[:, c] > 0.5, k=k)
        for c in range(Y_train.shape[1])
        if (Y_train[:, c] > 0.5).sum() >= k and 0 < (Y_test[:, c] > 0.5).sum() < len(Y_test)
    ]
    if aucs:
        out.append(("one_class_auc", float(np.mean(aucs)), 0.5))
    single = bool((Y_test.sum(1) == 1).all())
    labels = Y_test.argmax(1) if single else Y_test
    min_jaccard = 1.0 if single else 0.5
    res = retrieval(E_test, labels, k=k, min_jaccard=min_jaccard)
    L = Y_test > 0.5
    inter = L.astype(float) @ L.T.astype(float)
    union = L.sum(1)[:, None] + L.sum(1)[None, :] - inter
    rel = inter / np.maximum(union, 1) >= min_jaccard - 1e-12
    np.fill_diagonal(rel, False)
    out.append(
        (
            f"retrieval_precision_at_{k}",
            res["precision_at_k"],
            float(rel.mean() * len(rel) / max(len(rel) - 1, 1)),
        )
    )
    return out


def _plot(df) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = df[(df.split == "test") & (df.metric == "per_class_accuracy")]
    piv = sub.pivot_table(index="tree_id", columns="method", values="value")
    fig, ax = plt.subplots(figsize=(7, 3))
    piv.plot.bar(ax=ax, rot=20)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("per-class accuracy (test)")
    return png(fig)
