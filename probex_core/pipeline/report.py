"""The results report: what the catalog measured, side by side with every baseline.

`build_report(home)` reads the catalog's evaluations, layer sweep and trees, and for the cost
table each tree's checkpoints and layers; `write_report(home)` writes `report/report.md` and
its PNG plots under the home, atomically. A table that cannot be filled (no ground truth, no
trained expert) is still listed, with the reason, so a reader sees what is missing and why.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch

from probex_core.catalog import Home, load_sql, query
from probex_core.env import zoo_manifest_path
from probex_core.files import atomic_path
from probex_core.models import count_parameters
from probex_core.pipeline.common import png
from probex_core.pipeline.query import last_run
from probex_core.pipeline.report_experiments import Section, experiment_sections, headline
from probex_core.store import TreeExperts, TreeLayers
from probex_core.train import predict_logits

# classifier methods in the order the tables show them (column title, method)
CLASSIFIERS = (
    ("ProbeX", "probex"),
    ("ProbeX (class probes)", "probex-classes"),
    ("ProbeX (shared probes)", "probex-shared"),
    ("ProbeX (offset start)", "probex-offset"),
    ("ProbeX (± pairs start)", "probex-pairs"),
    ("ProbeX (random probes)", "probex-scratch"),
    ("Dense", "dense"),
    ("StatNN", "statnn"),
    ("ridge", "ridge"),
)
ZERO_SHOT_METRICS = (
    ("AUC (test)", "test", "zero_shot_ranking_auc"),
    ("top-1 (test)", "test", "zero_shot_top1"),
    ("held-out AUC", "holdout", "heldout_ranking_auc"),
    ("held-out top-1", "holdout", "heldout_top1"),
    ("held-out top-5", "holdout", "heldout_top5"),
)
RECOVERY_METRICS = (
    "routing_accuracy",
    "tree_ari",
    "tree_edge_accuracy",
    "tree_purity",
    "tree_root_accuracy",
)
NO_TRUTH = "the hub has no ground truth (no manifest.json and no labelled test split)"
BEYOND = (
    "A report covers one home. A second zoo seed or a Model-J-layout hub is run into a home "
    "of its own (`PROBEX_HOME=DIR probex run --hub HUB`, then `probex report --experiments` "
    "there); the README sets their tables side by side."
)


@dataclass
class Report:
    header: dict[str, str]
    sections: list[Section] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)  # file name → PNG

    def markdown(self) -> str:
        lines = ["# probex results report", ""]
        lines += [f"- {k}: {v}" for k, v in self.header.items()]
        for s in self.sections:
            lines += ["", f"## {s.title}", "", s.note]
            if s.table is not None:
                lines += ["", s.table.to_markdown(index=False, floatfmt=".3f")]
        for name in self.plots:
            lines += ["", f"![{name}]({name})"]
        return "\n".join(lines) + "\n"

    def section(self, title: str) -> Section:
        return next(s for s in self.sections if s.title == title)


def build_report(home: Home, measure_speed: bool = True) -> Report:
    """Every table the catalog can fill; `measure_speed` times inference per method."""
    evals = query(home, "SELECT * FROM evaluations")
    trees = query(home, "SELECT tree_id, name, size, expert_status, expert_layer FROM trees")
    names = dict(zip(trees.tree_id, trees.name, strict=True))
    truth = not evals[evals.split != "val"].empty
    report = Report(_header(home, truth))
    report.sections += [
        _sql_section(home, "Summary", "report_summary", "What the catalog holds."),
        _sql_section(home, "Trees", "report_trees", "The recovered trees, largest first."),
        _accuracy(evals, names, truth),
        _zero_shot(evals, names, truth),
        _routing_and_recovery(evals, truth),
        _cards(evals, names, truth),
        _layer_sweep(home, trees),
        _cost(home, trees, measure_speed),
        *experiment_sections(home, evals, names),
        Section("Beyond this home", None, BEYOND),
        _sql_section(
            home,
            "Experts (validation)",
            "report_experts",
            "Appendix: every expert's score on its tree's validation models.",
        ),
        _sql_section(
            home,
            "Evaluations (ground truth)",
            "report_evaluations",
            "Appendix: every score against ground truth, as `evaluations` holds it.",
        ),
    ]
    acc = report.section("Discriminative accuracy per tree").table
    if acc is not None:
        report.plots["accuracy.png"] = _bars(acc, "tree", [t for t, _ in CLASSIFIERS], "test")
    sweep = report.section("Layer sweep").table
    if sweep is not None:
        report.plots["layer_sweep.png"] = _sweep_plot(sweep)
    return report


def write_report(home: Home, report: Report | None = None) -> Path:
    """`report/report.md` and its plots under the home; returns the markdown's path."""
    report = report or build_report(home)
    out = home.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in report.plots.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report.markdown())
    return out / "report.md"


def _sql_section(home: Home, title: str, name: str, note: str) -> Section:
    """A table straight from one of the catalog's `sql/report_*.sql` queries."""
    table = query(home, load_sql(name))
    if table.empty:
        return Section(title, None, f"{note} (no rows)")
    return Section(title, table.astype(object).where(table.notna(), ""), note)


def _header(home: Home, truth: bool) -> dict[str, str]:
    run = last_run(home)
    hub = run.get("hub")
    path = zoo_manifest_path(hub) if hub else None
    manifest = json.loads(path.read_text()) if path else {}
    if manifest:
        zoo = f"preset {manifest.get('preset')}, seed {manifest.get('seed')}"
    elif truth:
        zoo = "no zoo manifest: ground truth from the hub's labelled test splits"
    else:
        zoo = "no zoo manifest (a hub without ground truth)"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
        f"torch {torch.__version__} on CPU ({torch.get_num_threads()} threads)",
        "probex": version("probex"),
        "hub": hub or "unknown (no run.json)",
        "hub layout": run.get("layout", "unknown (not recorded by the run)"),
        "zoo": zoo,
    }


def _accuracy(evals: pd.DataFrame, names: dict, truth: bool) -> Section:
    title = "Discriminative accuracy per tree"
    if not truth:
        return Section(title, None, f"Cannot fill: {NO_TRUTH}.")
    head = headline(evals)
    if head.empty:
        return Section(title, None, "Cannot fill: no tree has a trained classifier.")
    rows = []
    for tree_id, g in head.groupby("tree_id"):
        by = g.set_index("method")
        row = {
            "tree": names.get(tree_id, tree_id),
            "metric": g.metric.iloc[0],
            "test models": int(g.n.max()),
        }
        row["chance"] = (
            float(by.chance.dropna().iloc[0]) if by.chance.notna().any() else float("nan")
        )
        for title_, method in CLASSIFIERS:
            row[title_] = float(by.value[method]) if method in by.index else float("nan")
        rows.append(row)
    note = (
        "Undocumented test models of each tree, read by the tree's experts. Per-class "
        "accuracy: each class a yes/no question, chance the majority guess per class; "
        "top-1 for trees with one class per model, chance 1/classes."
    )
    return Section(title, pd.DataFrame(rows), note)


def _zero_shot(evals: pd.DataFrame, names: dict, truth: bool) -> Section:
    title = "Zero-shot and text search"
    if not truth:
        return Section(title, None, f"Cannot fill: {NO_TRUTH}.")
    zs = evals[evals.method == "probex-zeroshot"]
    if zs.empty:
        return Section(title, None, "Cannot fill: no tree has a zero-shot expert.")
    rows = []
    for tree_id, g in zs.groupby("tree_id"):
        by = g.set_index(["split", "metric"]).value
        row = {"tree": names.get(tree_id, tree_id)}
        for col, split, metric in ZERO_SHOT_METRICS:
            row[col] = float(by.get((split, metric), float("nan")))
        rows.append(row)
    found = {}
    for metric in ("heldout_precision_at_10", "seen_precision_at_10"):
        g = evals[evals.metric == metric]
        chance = f"; chance {g.chance.iloc[0]:.3f}" if len(g) else ""
        found[metric] = ", ".join(f"{m} {v:.3f}" for m, v in zip(g.method, g.value, strict=True))
        found[metric] += chance
    note = (
        "Class names as text: AUC ranks a model's own classes above the others (0.5 chance); "
        "held-out classes were never in any expert's training. Text search (`probex search`, "
        "for a name no expert knows: the text's score plus ln of how many classes the model's "
        "classifier does not find; "
        "plain cosine `search-cosine`; `text-blind`: the models with the most classes their "
        "classifier does not find, whatever the text), precision@10: held-out class names "
        "over every model, "
        f"{found['heldout_precision_at_10'] or 'not measured'}; the names the experts know, "
        f"over the undocumented models, {found['seen_precision_at_10'] or 'not measured'}."
    )
    return Section(title, pd.DataFrame(rows), note)


def _cards(evals: pd.DataFrame, names: dict, truth: bool) -> Section:
    title = "Generated model cards"
    cards = evals[evals.method == "card"]
    if not truth:
        return Section(title, None, f"Cannot fill: {NO_TRUTH}.")
    if cards.empty:
        return Section(title, None, "Cannot fill: no tree has a trained classifier.")
    rows = []
    for tree_id, g in cards.groupby("tree_id"):
        by = g[g.split == "test"].set_index("metric")

        def test(metric: str, col: str = "value", by=by) -> float:
            return float(by[col].get(metric, float("nan")))

        held = g[(g.split != "test") & (g.metric == "listed_precision")]
        rows.append(
            {
                "tree": names.get(tree_id, tree_id),
                "precision (test)": test("listed_precision"),
                "chance": test("listed_precision", "chance"),
                "recall (test)": test("listed_recall"),
                "models listing a class": test("models_listing_a_class"),
                "precision (holdout)": float(held.value.mean()) if len(held) else float("nan"),
            }
        )
    note = (
        "The classes `probex cards` lists on undocumented models' cards (a confidence chosen "
        "on validation for 90% precision; for many-class models never below 0.5), against the truth. Chance: the "
        "share of (model, class) pairs that are true. Holdout models were also trained on "
        "classes no expert knows, so their cards miss those and list others."
    )
    return Section(title, pd.DataFrame(rows), note)


def _routing_and_recovery(evals: pd.DataFrame, truth: bool) -> Section:
    title = "Routing and tree recovery"
    rows = evals[(evals.tree_id == "ALL") & evals.metric.isin(RECOVERY_METRICS)]
    if not truth:
        return Section(title, None, f"Cannot fill: {NO_TRUTH}.")
    if rows.empty:
        return Section(
            title, None, "Cannot fill: routing and recovery are scored against a zoo "
            "manifest's true trees; this hub's ground truth holds only class labels.",
        )  # fmt: skip
    table = rows[["metric", "split", "value", "n"]].sort_values(["metric", "split"])
    note = (
        "The learned router sends each model to a tree by its weights; with routing accuracy "
        "1.0 the mixture of tree experts answers exactly as with oracle routing. Recovery: "
        "trees and parent edges found from weights, against the zoo's truth."
    )
    return Section(title, table.reset_index(drop=True), note)


def _layer_sweep(home: Home, trees: pd.DataFrame) -> Section:
    title = "Layer sweep"
    sweep = query(home, "SELECT tree_id, layer, val_metric FROM raw_layer_sweep")
    if sweep.empty:
        return Section(title, None, "Cannot fill: no tree was swept (no trained experts).")
    chosen = dict(zip(trees.tree_id, trees.expert_layer, strict=True))
    names = dict(zip(trees.tree_id, trees.name, strict=True))
    sweep = sweep.assign(
        tree=sweep.tree_id.map(names), chosen=sweep.layer == sweep.tree_id.map(chosen)
    )
    table = sweep[["tree", "layer", "val_metric", "chosen"]].sort_values(["tree", "layer"])
    note = (
        "Validation score of a cheap ProbeX per candidate layer; the experts read the layer "
        "chosen on validation (never on test)."
    )
    return Section(title, table.reset_index(drop=True), note)


def _cost(home: Home, trees: pd.DataFrame, measure_speed: bool) -> Section:
    title = "Cost per method"
    rows = []
    for t in trees[trees.expert_status == "trained"].itertuples():
        experts = TreeExperts(home, t.tree_id)
        meta = experts.meta()
        X = TreeLayers(home, t.tree_id).read(meta.layer)
        for col, method in CLASSIFIERS:
            if method not in meta.checkpoints:
                continue
            model, extra = experts.load(method, meta)
            row = {"tree": t.name, "method": col, "parameters": count_parameters(model)}
            row["s/epoch"] = extra.get("epoch_seconds", float("nan"))
            if measure_speed:
                row["models/s"] = _models_per_second(model, X)
            rows.append(row)
    if not rows:
        return Section(title, None, "Cannot fill: no tree has trained experts.")
    note = (
        "Trainable parameters, training seconds per epoch (as recorded when trained; the "
        "ridge read-out is closed form), and inference speed over the tree's models (one "
        "pass, this machine, now: a shared machine's load moves it)."
    )
    return Section(title, pd.DataFrame(rows), note)


def _models_per_second(model, X: torch.Tensor) -> float:
    predict_logits(model, X[: min(len(X), 8)])  # warm up
    t = time.perf_counter()
    predict_logits(model, X)
    return len(X) / max(time.perf_counter() - t, 1e-9)


def _bars(table: pd.DataFrame, index: str, columns: list[str], split: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in table and table[c].notna().any()]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    table.set_index(index)[cols + ["chance"]].plot.bar(ax=ax, rot=15)
    ax.set_ylabel(f"accuracy ({split})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    return png(fig)


def _sweep_plot(sweep: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    sweep.pivot_table(index="tree", columns="layer", values="val_metric").plot.bar(ax=ax, rot=15)
    ax.set_ylabel("validation score")
    ax.legend(fontsize=7, ncol=4, title="layer")
    return png(fig)
