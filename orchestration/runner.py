"""`probex run`: materialise the whole graph in-process, incrementally, with progress.

It uses a persistent Dagster instance under $PROBEX_HOME/dagster, so runs, partitions and
check results show up in `dagster dev` afterwards, and a rerun rebuilds only stale trees.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from assets._common import PROGRESS_ENV
from assets.cards import model_cards
from assets.evaluation import evaluations, model_predictions
from assets.experts import ExpertTraining, tree_experts
from assets.hub import hub_repos
from assets.layers import tree_layers
from assets.partitions import register_trees
from assets.resources import make_resources
from assets.trees import model_trees
from orchestration.definitions import ASSET_MODULES
from probex_core import pipeline
from probex_core.catalog import Home, query, read_table, sweep_partial_files
from probex_core.env import default_zoo_hub, zoo_dir
from probex_core.errors import UserError
from probex_core.files import atomic_write_bytes, atomic_write_json
from probex_core.hub import describe_hub, make_source
from probex_core.store import TreeExperts


def dagster_home(home: Home) -> Path:
    """The Dagster instance directory under the home, made (or its settings brought up to
    date) on use."""
    home.dagster_home.mkdir(parents=True, exist_ok=True)
    config = home.dagster_home / "dagster.yaml"
    if not config.exists() or config.read_bytes() != DAGSTER_YAML:
        atomic_write_bytes(config, DAGSTER_YAML)
    return home.dagster_home


# telemetry off; no "join the community" modal over the UI of a home probex created
DAGSTER_YAML = b"telemetry:\n  enabled: false\nnux:\n  enabled: false\n"


def instance_for(home: Home) -> dg.DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(dagster_home(home))
    return dg.DagsterInstance.from_config(str(home.dagster_home))


QUIET = {"console": {"config": {"log_level": "WARNING"}}}  # the run's own lines only


def _step(n: int, total: int, text: str) -> float:
    print(f"[{n}/{total}] {text}", flush=True)
    return time.perf_counter()


def _graph() -> list:
    return [
        *dg.load_assets_from_modules(ASSET_MODULES),
        *dg.load_asset_checks_from_modules(ASSET_MODULES),
    ]


def build_tree(
    home: Home, hub_spec: str, tree: str, training: ExpertTraining | None = None
) -> list[dg.AssetCheckEvaluation]:
    """One tree's partition (its layers, then its experts) materialised in this process; its
    asset checks. What `run_all` does per tree in-process (`--dask`: `dask_run`)."""
    result = dg.materialize(
        _graph(),
        instance=instance_for(home),
        resources=make_resources(home.spec, hub_spec),
        run_config=dg.RunConfig(ops={"tree_experts": training} if training else {}, loggers=QUIET),
        partition_key=tree,
        selection=[tree_layers, tree_experts],
    )
    return result.get_asset_check_evaluations()


def run_all(
    home: Home,
    hub_spec: str,
    training: ExpertTraining | None = None,
    force: bool = False,
    dask: str | None = None,
) -> dict:
    """Crawl → trees → (stale) layers and experts per tree → predictions → evaluations.

    `dask`: build the stale trees on a Dask cluster (`orchestration.dask_run`): at that
    scheduler address, or on a LocalCluster started for the run with "local"."""
    assets = _graph()
    os.environ[PROGRESS_ENV] = "1"  # the steps' progress lines reach this terminal
    resources = make_resources(home.spec, hub_spec)
    instance = instance_for(home)
    home.root.mkdir(parents=True, exist_ok=True)
    swept = sweep_partial_files(home)
    if swept:
        print(f"      removed {len(swept)} partial files an interrupted run left", flush=True)
    layout = describe_hub(hub_spec, make_source(hub_spec))  # a bad hub stops here, one line
    atomic_write_json(home.root / "run.json", {"hub": hub_spec, "layout": layout})
    started = time.perf_counter()
    checks: list[dg.AssetCheckEvaluation] = []

    def materialize(**kwargs) -> None:
        result = dg.materialize(
            assets,
            instance=instance,
            resources=resources,
            run_config=dg.RunConfig(loggers=QUIET),
            **kwargs,
        )
        checks.extend(result.get_asset_check_evaluations())

    t = _step(1, 4, f"crawl {hub_spec} and recover trees")
    print(f"      {layout}", flush=True)
    materialize(selection=[hub_repos, model_trees])
    repos = query_or_empty(home, "SELECT count(*) AS n FROM raw_repos")
    print(f"      {repos} repos crawled in {time.perf_counter() - t:.1f}s", flush=True)
    for line in split_report(home):
        print(f"      {line}", flush=True)

    plan = pipeline.stale_trees(home)
    targets = list(plan.wanted) if force else plan.stale
    register_trees(instance, plan.wanted)
    fresh = len(plan.wanted) - len(targets)
    _step(2, 4, f"{len(plan.wanted)} trees: {len(targets)} to build, {fresh} up to date")
    names = tree_names(home)
    if dask and targets:
        from orchestration.dask_run import build_trees_on_dask

        checks += build_trees_on_dask(home, hub_spec, targets, training, dask, names)
    for i, tree in enumerate([] if dask else targets, 1):
        t = time.perf_counter()
        print(f"      tree {i}/{len(targets)} {names.get(tree, tree)} ({tree})", flush=True)
        checks += build_tree(home, hub_spec, tree, training)
        print(f"        {expert_line(home, tree)} ({time.perf_counter() - t:.1f}s)", flush=True)

    t = _step(3, 4, "route every model to its expert; evaluate; write model cards")
    materialize(selection=[model_predictions, evaluations, model_cards])
    _step(4, 4, f"done in {time.perf_counter() - started:.1f}s; catalog: {home.catalog_path}")
    results = {_check_key(c): c for c in checks}
    failed = [k for k, c in results.items() if not c.passed and c.severity != WARN]
    warned = [k for k, c in results.items() if not c.passed and c.severity == WARN]
    if failed:
        print(f"      checks FAILED: {', '.join(failed)}", flush=True)
    for key in warned:
        c = results[key]
        where = names.get(c.partition, c.partition) if c.partition else key
        print(f"      warning: {where}: {c.description or c.check_name}", flush=True)
    return {
        "built": targets,
        "fresh": fresh,
        "seconds": time.perf_counter() - started,
        "checks": {k: c.passed for k, c in results.items() if c.severity != WARN},
        "warnings": {k: c.description or "" for k, c in results.items() if k in warned},
    }


WARN = dg.AssetCheckSeverity.WARN


def _check_key(c: dg.AssetCheckEvaluation) -> str:
    key = f"{c.asset_key.to_user_string()}:{c.check_name}"
    return f"{key}[{c.partition}]" if c.partition else key


def tree_names(home: Home) -> dict[str, str]:
    """tree id → its readable name (the root repo)."""
    summary = read_table(home, "tree_summary")
    return dict(zip(summary.tree_id, summary.root_repo, strict=True))


def expert_line(home: Home, tree: str) -> str:
    """What one tree's build gave: its experts' layer and validation score, or why none."""
    try:
        meta = TreeExperts(home, tree).meta()
    except FileNotFoundError:
        return "no experts were written (see the checks below)"
    if meta.skipped:
        return f"no expert: {meta.skipped}"
    res = read_table(home, "expert_results")
    metric = "val_top1" if meta.single_label else "val_per_class_accuracy"
    row = res[(res.tree_id == tree) & (res.method == "probex") & (res.metric == metric)]
    if row.empty:
        return f"experts on layer {meta.layer}"
    score = f"ProbeX {metric[4:]} {row.value.iloc[0]:.3f} (chance {row.chance.iloc[0]:.3f})"
    return f"experts on layer {meta.layer}: {score}"


def split_report(home: Home) -> list[str]:
    """Lines on the splits a hub declares: how many models each holds and how many of them
    carry labels. A UserError when the hub declares splits and its train split has none:
    no expert could learn. An evaluation split without labels is said, not fatal."""
    from probex_core.hub.records import EVAL_SPLITS
    from probex_core.pipeline.labels import is_list

    repos = read_table(home, "repos")
    declared = repos[repos.split.notna()] if "split" in repos.columns else repos.iloc[:0]
    if declared.empty:
        return []
    lines = []
    for split, rows in declared.groupby("split", sort=True):
        labels = rows.withheld_classes if split in EVAL_SPLITS else rows.training_classes
        n_lab = int(labels.map(lambda v: is_list(v) and len(v) > 0).sum())
        lines.append(f"split {split}: {len(rows):,} models, {n_lab:,} with labels")
        if n_lab == 0 and split == "train":
            raise UserError(
                f"split 'train' has no labels: none of its {len(rows):,} models declares its "
                "classes (dataset_chosen_targets, imagenet_class_id or training_classes)"
            )
        if n_lab == 0 and split in EVAL_SPLITS:
            lines.append(f"split {split} has no labels: it is predicted but cannot be scored")
    return lines


def query_or_empty(home: Home, sql: str) -> object:
    from probex_core.catalog import refresh_views

    refresh_views(home)
    df = query(home, sql)
    return df.iloc[0, 0] if len(df) else 0


def ensure_default_hub(home: Home, preset: str, seed: int = 0) -> Path:
    """The embedded default: a zoo generated once under the home, reused afterwards."""
    out = zoo_dir(home.root, preset)
    hub = default_zoo_hub(home.root, preset)
    if not (out / "manifest.json").is_file():
        from probex_core.zoo import generate_zoo

        print(f"no hub given: generating the built-in '{preset}' zoo into {out}", flush=True)
        generate_zoo(preset=preset, out=out, seed=seed, progress=True)
    return hub
