"""The report's tables that come from `probex report --experiments` (`pipeline.experiments`),
and what every report section shares: `Section` and the headline metric per tree."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from probex_core.catalog import Home, query
from probex_core.schemas import frame

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


def headline(evals: pd.DataFrame) -> pd.DataFrame:
    """Per tree, its headline metric on the test split: top-1 for one-class-per-model trees
    (the LoRA tree), per-class accuracy otherwise."""
    test = evals[(evals.split == "test") & evals.metric.isin(["per_class_accuracy", "top1"])]
    single = set(test[test.metric == "top1"].tree_id)
    keep = test.metric == test.tree_id.map(
        lambda t: "top1" if t in single else "per_class_accuracy"
    )
    return test[keep]


def experiment_sections(home: Home, evals: pd.DataFrame, names: dict) -> list[Section]:
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
        "The shared ProbeX (ridge warm starts, as the experts' probex-shared) with r_U "
        "probes, projection width r_V (64 "
        "unless named) and representation width r_T, on each tree's layer and split; test "
        "models. r_U=8 r_V=32 r_T=80 has about 20× fewer parameters than Dense on a 64×128 "
        "layer of 80 classes."
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
        rows.assign(models_per_second=rows.get("models_per_second", np.nan))
        .groupby("experiment", sort=False)
        .agg(
            parameters=("params", "min"),
            max_parameters=("params", "max"),
            s_per_epoch=("epoch_seconds", "median"),
            models_per_second=("models_per_second", "median"),
        )
        .reset_index()
    )
    table["experiment"] = table.experiment.map(EXPERIMENT_NAMES)
    note = (
        "Trainable parameters (smallest and largest over the trees; a learner across all "
        "trees is one model, its ridge read-outs included in the SANE rows' largest) and the "
        "median seconds per training epoch and test models read per second at inference "
        "(for the SANE-style rows, its embedding plus the read-out; for the official protocol, "
        "after the weights are read), on this machine when the experiments ran. The "
        "pipeline's own methods are in the cost table above."
    )
    return Section(title, table, note)


def _official(ran: pd.DataFrame, evals: pd.DataFrame) -> Section:
    """The official code's protocol beside the pipeline's experts, per tree."""
    title = "The official ProbeX protocol beside ours"
    official = ran[ran.experiment == "official"]
    if official.empty:
        return Section(title, None, NOT_RUN + NO_HUB)
    head = headline(evals)
    ids = official.tree_id
    table = pd.DataFrame({"tree": official.tree, "metric": official.metric,
                          "chance": official.chance})  # fmt: skip
    ours = (
        ("ours: ProbeX", "probex"),
        ("ours: ProbeX, shared probes", "probex-shared"),
        ("ours: ProbeX, random probes", "probex-scratch"),
    )
    for column, method in ours:
        table[column] = ids.map(head[head.method == method].set_index("tree_id").value)
    table["official protocol"] = official.value
    table["official parameters"] = official.params
    note = (
        "Ours: the pipeline's experts (each model's change from its tree's root at unit RMS; "
        "ProbeX with 32 probes, projection 64, representation 128, warm-started from the "
        "ridge read-out or from random probes, or with class probes (one probe and one "
        "projection of its own per class, from the ridge read-out), the better on validation "
        "as ProbeX; validated every 10 epochs, stopped after 8 without a gain). "
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
    own = headline(evals).query("method == 'probex'").set_index("tree_id").value
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
