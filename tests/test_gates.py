"""Sensors and gates: what decides that something runs, or that it must not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from probex_core import pipeline
from probex_core.catalog import Home, read_table, write_table
from probex_core.hub import make_source
from probex_core.store import TreeExperts


@pytest.fixture
def home_copy(built, tmp_path) -> Home:
    """A private copy of the built home: these tests break things on purpose."""
    src, _ = built
    shutil.copytree(src.root, tmp_path / "home", ignore=shutil.ignore_patterns("*.duckdb*"))
    return Home(tmp_path / "home")


def _hub(home: Home) -> Path:
    from probex_core.pipeline.query import last_run_hub

    return Path(last_run_hub(home))


def test_hub_change_sensor_skips_an_unchanged_hub_and_requests_a_crawl_on_a_change(
    home_copy, tmp_path
):
    from assets.resources import HubSourceResource, ProbexHome
    from orchestration.sensors import hub_change_sensor

    hub = tmp_path / "hub"
    shutil.copytree(_hub(home_copy), hub)
    pipeline.crawl(home_copy, make_source(str(hub)))  # the crawl records the listing it saw
    resources = {
        "hub": HubSourceResource(spec=str(hub)),
        "probex_home": ProbexHome(root=str(home_copy.root)),
    }
    with dg.build_sensor_context(resources=resources) as ctx:
        assert isinstance(hub_change_sensor(ctx), dg.SkipReason)  # first tick after a crawl
    (hub / "newcomer" / "model").mkdir(parents=True)
    with dg.build_sensor_context(resources=resources) as ctx:
        result = hub_change_sensor(ctx)
    assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
    state = result.cursor
    assert state == make_source(str(hub)).listing_fingerprint()
    with dg.build_sensor_context(resources=resources, cursor=state) as ctx:
        assert isinstance(hub_change_sensor(ctx), dg.SkipReason)


def test_listing_fingerprint_follows_files_not_just_ids(tmp_path):
    hub = tmp_path / "hub"
    (hub / "org" / "a").mkdir(parents=True)
    (hub / "org" / "a" / "model.safetensors").write_bytes(b"x")
    before = make_source(str(hub)).listing_fingerprint()
    (hub / "org" / "a" / "model.safetensors").write_bytes(b"xy")  # same ids, new weights
    assert make_source(str(hub)).listing_fingerprint() != before


def test_plan_rebuilds_registers_new_trees_and_requests_only_stale_ones(home_copy):
    from assets.partitions import register_trees
    from orchestration.sensors import plan_rebuilds

    plan = pipeline.stale_trees(home_copy)
    trees = sorted(plan.wanted)
    instance = dg.DagsterInstance.ephemeral()
    register_trees(instance, trees[1:])  # the first tree never seen as a partition
    result = plan_rebuilds(home_copy, instance)
    assert isinstance(result, dg.SensorResult)
    assert result.run_requests == []  # nothing stale
    (req,) = result.dynamic_partitions_requests
    assert list(req.partition_keys) == [trees[0]]


def _trained_tree(home: Home) -> str:
    return next(
        t
        for t in sorted(pipeline.stale_trees(home).wanted)
        if not TreeExperts(home, t).meta().skipped
    )


def test_the_expert_gate_refuses_an_expert_at_chance_or_with_non_finite_weights(home_copy):
    tree = _trained_tree(home_copy)
    assert pipeline.verify_experts(home_copy, tree)[0] == []
    res = read_table(home_copy, "expert_results")
    mine = res[res.tree_id == tree].copy()
    gated = mine.method == "probex"
    mine.loc[gated, "value"] = mine.loc[gated, "chance"]  # no better than chance
    write_table(home_copy, "expert_results", mine, part=tree)
    problems, _ = pipeline.verify_experts(home_copy, tree)
    assert problems and all("is not above chance" in p for p in problems), problems

    write_table(home_copy, "expert_results", res[res.tree_id == tree], part=tree)
    experts = TreeExperts(home_copy, tree)
    path = experts.dir / experts.meta().checkpoints["dense"]
    with open(path, "rb") as f:
        import struct

        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path), metadata=header["__metadata__"])
    problems, _ = pipeline.verify_experts(home_copy, tree)
    assert problems == [f"dense: non-finite weights in {[name]}"]


def test_a_failing_blocking_check_stops_what_depends_on_it(home_copy, monkeypatch):
    """tree_layers' check is blocking: when it fails, the tree's experts are not trained."""
    from assets.resources import make_resources
    from orchestration.definitions import ASSET_MODULES
    from orchestration.runner import instance_for

    tree = _trained_tree(home_copy)
    monkeypatch.setattr(pipeline, "verify_layers", lambda home, tree: ["fc2: planted fault"])
    before = TreeExperts(home_copy, tree).meta()
    shutil.rmtree(home_copy.expert_dir(tree))
    from assets.experts import tree_experts
    from assets.layers import tree_layers

    result = dg.materialize(
        [
            *dg.load_assets_from_modules(ASSET_MODULES),
            *dg.load_asset_checks_from_modules(ASSET_MODULES),
        ],
        selection=[tree_layers, tree_experts],
        partition_key=tree,
        instance=instance_for(home_copy),
        resources=make_resources(str(home_copy.root), str(_hub(home_copy))),
        raise_on_error=False,
        run_config={"ops": {"tree_experts": {"config": {"epochs": 5, "sweep_epochs": 5}}}},
    )
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"tree_layers_complete": False}
    done = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "tree_layers" in done and "tree_experts" not in done
    assert not TreeExperts(home_copy, tree).exists() and before.layer


def test_a_training_curve_is_short_enough_for_the_ui_to_show_inline():
    """Dagster folds markdown of 1,000+ characters behind "[Show Markdown]"; the validation
    curve of a 300-epoch expert (31 validations) must stay under that."""
    from assets._common import md_svg_curve

    xs = [float(10 * i) for i in range(31)]
    ys = [0.5 + 0.01 * i for i in range(31)]
    md = md_svg_curve(xs, ys, "ProbeX validation by epoch").value
    assert len(md) < 1000 and "data:image/svg+xml;base64," in md
    long = md_svg_curve([float(i) for i in range(500)], [0.5] * 500, "long").value
    assert len(long) < 1000


def test_a_failing_great_expectations_check_stops_tree_recovery(
    tiny_hub_copy, tmp_path, monkeypatch
):
    """hub_repos_schema (a Great Expectations suite) is blocking: a repos table with a
    duplicated id fails it inside the run, and model_trees is not materialised."""
    import assets.hub
    from assets.hub import hub_repos
    from assets.resources import make_resources
    from assets.trees import model_trees
    from orchestration.definitions import ASSET_MODULES
    from orchestration.runner import instance_for

    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    hub = tmp_path / "hub"
    for m in manifest["models"]:
        if m["tree_id"] == "mlp-b":
            shutil.copytree(tiny_hub_copy / "hub" / m["repo_id"], hub / m["repo_id"])
    real = assets.hub.read_table

    def duplicated(home, table):
        df = real(home, table)
        return pd.concat([df, df.head(1)]) if table == "repos" else df

    monkeypatch.setattr(assets.hub, "read_table", duplicated)
    home = Home(tmp_path / "home")
    result = dg.materialize(
        [
            *dg.load_assets_from_modules(ASSET_MODULES),
            *dg.load_asset_checks_from_modules(ASSET_MODULES),
        ],
        selection=[hub_repos, model_trees],
        instance=instance_for(home),
        resources=make_resources(str(home.root), str(hub)),
        raise_on_error=False,
    )
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["hub_repos_schema"] is False
    done = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert done == {"hub_repos"}
    assert not home.table_dir("tree_members").exists()
