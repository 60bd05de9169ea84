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

import duckdb
import pandas as pd
import torch

from probex_core.catalog import Home, load_sql, query
from probex_core.env import zoo_manifest_path
from probex_core.errors import UserError
from probex_core.files import atomic_path
from probex_core.hub import describe_hub, make_source
from probex_core.models import count_parameters
from probex_core.pipeline.common import png
from probex_core.pipeline.query import last_run_hub
from probex_core.schemas import frame
from probex_core.store import TreeExperts, TreeLayers
from probex_core.train import predict_logits

# classifier methods in the order the tables show them (column title, method)
CLASSIFIERS = (
    ("ProbeX", "probex"),
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
NOT_RUN = "Not run yet: `probex report --experiments` trains these models (minutes per tree)."
NO_HUB = (
    " The official protocol also needs the hub the home ran on: it reads the weights as the "
    "hub stores them, and is skipped when that hub is not readable."
)


@dataclass
class Section:
    title: str
    table: pd.DataFrame | None  # None: could not be filled
    note: str  # what the table shows, or why it is missing


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
        _layer_sweep(home, trees),
        _cost(home, trees, measure_speed),
        *_experiments(home, evals, names),
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
    hub = last_run_hub(home)
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
        "hub layout": _layout(hub) if hub else "unknown",
        "zoo": zoo,
    }


def _layout(hub: str) -> str:
    try:
        return describe_hub(hub, make_source(hub))
    except UserError as e:  # the hub moved or went away since the run: say so, report the rest
        return f"not readable now ({e})"


def _headline(evals: pd.DataFrame) -> pd.DataFrame:
    """Per tree, its headline metric on the test split: top-1 for one-class-per-model trees
    (the LoRA tree), per-class accuracy otherwise."""
    test = evals[(evals.split == "test") & evals.metric.isin(["per_class_accuracy", "top1"])]
    single = set(test[test.metric == "top1"].tree_id)
    keep = test.metric == test.tree_id.map(
        lambda t: "top1" if t in single else "per_class_accuracy"
    )
    return test[keep]


def _accuracy(evals: pd.DataFrame, names: dict, truth: bool) -> Section:
    title = "Discriminative accuracy per tree"
    if not truth:
        return Section(title, None, f"Cannot fill: {NO_TRUTH}.")
    head = _headline(evals)
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
    search = evals[evals.metric == "heldout_precision_at_10"].set_index("method").value
    found = ", ".join(f"{m} {v:.3f}" for m, v in search.items()) or "not measured"
    note = (
        "Class names as text: AUC ranks a model's own classes above the others (0.5 chance); "
        "held-out classes were never in any expert's training. Text search over held-out "
        f"class names, precision@10 (calibrated `search`, plain cosine `search-cosine`): {found}."
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


def _experiments(home: Home, evals: pd.DataFrame, names: dict) -> list[Section]:
    """The on-demand experiments (`pipeline.experiments`), when they were run."""
    try:
        ran = query(home, "SELECT * FROM raw_report_experiments")
    except duckdb.CatalogException:  # a catalog refreshed before the table existed
        ran = frame([], "report_experiments")
    ran = ran.assign(tree=ran.tree_id.map(lambda t: names.get(t, t)))
    probes = ran[ran.experiment == "probes"]
    ablation = Section(
        "Probes ablation",
        probes[
            ["tree", "setting", "metric", "value", "chance", "params", "epoch_seconds"]
        ].reset_index(drop=True)
        if len(probes)
        else None,
        "ProbeX (ridge warm start, as the experts) with r_U probes and representation width "
        "r_T, on each tree's layer and split; test models."
        if len(probes)
        else NOT_RUN,
    )
    return [ablation, _cross_tree(ran, evals), _official(ran, evals), _experiment_cost(ran)]


EXPERIMENT_NAMES = {
    "multiview": "multi-view ProbeX (per tree)",
    "shared": "one shared ProbeX (all trees)",
    "sane": "SANE-style learner (all trees)",
    "official": "official ProbeX protocol (per tree)",
}


def _experiment_cost(ran: pd.DataFrame) -> Section:
    """Parameters and seconds per training epoch of the experiments' models."""
    title = "Cost of the experiments' models"
    rows = ran[ran.experiment.isin(list(EXPERIMENT_NAMES))]
    if rows.empty:
        return Section(title, None, NOT_RUN)
    table = (
        rows.groupby("experiment", sort=False)
        .agg(
            parameters=("params", "min"),
            max_parameters=("params", "max"),
            s_per_epoch=("epoch_seconds", "median"),
        )  # fmt: skip
        .reset_index()
    )
    table["experiment"] = table.experiment.map(EXPERIMENT_NAMES)
    note = (
        "Trainable parameters (smallest and largest over the trees; a learner across all "
        "trees is one model, its ridge read-outs included in the SANE rows' largest) and the "
        "median seconds per training epoch, on this machine when the experiments ran. The "
        "pipeline's own methods, with inference speed, are in the cost table above."
    )
    return Section(title, table, note)


def _official(ran: pd.DataFrame, evals: pd.DataFrame) -> Section:
    """The official code's protocol beside the pipeline's experts, per tree."""
    title = "The official ProbeX protocol beside ours"
    official = ran[ran.experiment == "official"]
    if official.empty:
        return Section(title, None, NOT_RUN + NO_HUB)
    head = _headline(evals)
    ids = official.tree_id
    table = pd.DataFrame({"tree": official.tree, "metric": official.metric,
                          "chance": official.chance})  # fmt: skip
    ours = (("ours: ProbeX", "probex"), ("ours: ProbeX, random probes", "probex-scratch"))
    for column, method in ours:
        table[column] = ids.map(head[head.method == method].set_index("tree_id").value)
    table["official protocol"] = official.value
    table["official parameters"] = official.params
    note = (
        "Ours: the pipeline's experts (each model's change from its tree's root at unit RMS; "
        "32 probes, projection 64, representation 128; warm-started from the ridge read-out, "
        "or from random probes; validated every 10 epochs, stopped after 8 without a gain). "
        "Official: the paper's ProbeX (128 probes, projection 128, representation 512) from "
        "random init on the weights as the hub stores them, Adam lr 1e-3, weight decay 1e-5, "
        "batch 128, BCE, validated every 25 epochs, best checkpoint kept; "
        f"{official.setting.iloc[0]}. Same models, splits and seed."
    )
    return Section(title, table.reset_index(drop=True), note)


SANE_COLUMNS = (  # (column title, end of the setting the experiment wrote)
    ("SANE-style, its head", "head"),
    ("SANE-style, ridge on mean encoding", "ridge probe (mean)"),
    ("SANE-style, ridge on token codes", "ridge probe (codes)"),
)


def _cross_tree(ran: pd.DataFrame, evals: pd.DataFrame) -> Section:
    """Each tree's own experts beside the learners trained on every tree at once."""
    title = "Per-tree experts against cross-tree learners"
    first = ran[ran.experiment.isin(["shared", "sane"])].drop_duplicates("tree_id")
    if first.empty:
        return Section(title, None, NOT_RUN)
    own = _headline(evals).query("method == 'probex'").set_index("tree_id").value
    table = pd.DataFrame({"tree": first.tree, "metric": first.metric, "chance": first.chance})
    ids = first.tree_id
    table["expert per tree"] = ids.map(own)
    table["multi-view expert per tree"] = ids.map(_values(ran, "multiview"))
    table["one shared ProbeX"] = ids.map(_values(ran, "shared"))
    for column, ending in SANE_COLUMNS:
        table[column] = ids.map(_values(ran, "sane", ending))
    sizes = ", ".join(
        f"{name}: {int(ran[ran.experiment == kind].params.min()):,} parameters"
        for name, kind in (("shared ProbeX", "shared"), ("SANE-style learner", "sane"))
        if (ran.experiment == kind).any()
    )
    note = (
        "Learned inside one tree (the tree's ProbeX expert; a multi-view ProbeX on the tree "
        "alone, random init, 16 probes per view) against learned across all trees: one ProbeX "
        "on every tree's models at once (layers zero-padded to the largest shape, the union of "
        "classes), and a SANE-style weight-space learner (rows cut into 128-value tokens with "
        "row, chunk and layer encodings; one transformer encoder-decoder trained on every tree "
        "with batch-normalised reconstruction and a supervised head), read by its own head, by "
        "a ridge read-out of its mean encoding, and by a ridge read-out of its per-token codes "
        f"(per tree, λ on validation). Each scored per tree on its own classes. {sizes}."
    )
    return Section(title, table.reset_index(drop=True), note)


def _values(ran: pd.DataFrame, experiment: str, ending: str = "") -> pd.Series:
    rows = ran[(ran.experiment == experiment) & ran.setting.str.endswith(ending)]
    return rows.set_index("tree_id").value


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
