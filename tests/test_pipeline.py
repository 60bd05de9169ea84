"""The Dagster graph on the tiny zoo: materialise, check, query, rebuild incrementally."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

from assets.experts import ExpertTraining
from probex_core import pipeline
from probex_core.catalog import Home, load_sql, query, read_table
from probex_core.pipeline.labels import text_encoder
from probex_core.store import TreeExperts
from probex_core.text import class_prompt
from tests.conftest import FAST, SHORT

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "hub_repos",
        "model_trees",
        "tree_layers",
        "tree_experts",
        "model_predictions",
        "evaluations",
    } <= keys
    for key in keys:
        assert graph.get(dg.AssetKey(key)).group_name != "default"
    checked = {c.asset_key.to_user_string() for c in graph.asset_check_keys}
    assert checked == keys, "every asset has at least one check"
    assert defs.get_sensor_def("stale_trees_sensor") is not None


def test_everything_materialises_and_every_check_passes(built):
    home, result = built
    assert result["checks"], "no checks ran"
    assert all(result["checks"].values()), result["checks"]
    for view in ("models", "trees", "experts", "predictions", "evaluations", "embeddings"):
        assert len(query(home, f"SELECT * FROM {view}")) > 0, view


def _largest_multiclass_tree(home: Home, zoo: Path) -> tuple[str, dict]:
    manifest = json.loads((zoo / "manifest.json").read_text())
    sizes = query(home, "SELECT tree_id, root_repo, size FROM trees WHERE kind = 'full'")
    row = sizes.loc[sizes["size"].idxmax()]
    return str(row.tree_id), manifest


def test_largest_tree_expert_reads_classes_of_undocumented_models(built, tiny_hub_copy):
    """Tiny zoo, mlp-a (96 training models, 8 undocumented test models), the FAST settings:
    ProbeX (class probes) per-class test accuracy measured 0.855 against a majority-guess
    chance of 0.478 (shared probes 0.784, ridge 0.794, from random probes 0.678, Dense 0.713). Every multi-class tree with
    an expert beats its chance."""
    home, _ = built
    tree, _ = _largest_multiclass_tree(home, tiny_hub_copy)
    df = query(
        home,
        "SELECT tree_id, method, value, chance FROM evaluations "
        "WHERE split = 'test' AND metric = 'per_class_accuracy'",
    ).set_index(["tree_id", "method"])
    probex = df.loc[(tree, "probex")]
    assert probex.value >= probex.chance + 0.12, df
    full = set(query(home, "SELECT tree_id FROM trees WHERE kind = 'full'").tree_id)
    for t in set(df.index.get_level_values(0)) & full:
        assert df.loc[(t, "probex")].value > df.loc[(t, "probex")].chance, df


def test_shuffled_labels_leave_the_largest_tree_expert_at_chance(built, tiny_hub_copy):
    """The control: the same expert (class probes from the ridge read-out), same layer and
    settings, trained on documented models whose class lists were shuffled among them (the
    ridge read-out refitted on them too), is scored on the same test models."""
    from probex_core.metrics import per_class_accuracy
    from probex_core.pipeline.common import ExpertSettings
    from probex_core.pipeline.labels import majority_chance
    from probex_core.pipeline.starts import class_probes
    from probex_core.ridge import fit_ridge
    from probex_core.store import TreeExperts, TreeLayers
    from probex_core.train import TensorData, predict_proba

    home, _ = built
    tree, manifest = _largest_multiclass_tree(home, tiny_hub_copy)
    layers = TreeLayers(home, tree)
    meta, index = TreeExperts(home, tree).meta(), layers.index()
    truth = {m["repo_id"]: m for m in manifest["models"]}
    classes = meta.classes

    def split(ids: list[str]) -> TensorData:
        X = layers.read(meta.layer, [index["repo_ids"].index(r) for r in ids])
        Y = torch.tensor([[c in truth[r]["training_classes"] for c in classes] for r in ids])
        return TensorData(X, Y.float())

    train, val = split(meta.train_repos), split(meta.val_repos)
    test = split(sorted(r for r in index["repo_ids"] if truth[r]["split"] == "test"))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    settings = ExpertSettings(**FAST)
    shuffled = TensorData(train.X, train.Y[perm])
    res = class_probes(shuffled, val, len(classes), settings.train_config("classify"), settings,
                       fit_ridge(shuffled, val))  # fmt: skip
    acc = per_class_accuracy(test.Y.numpy(), predict_proba(res.model, test).numpy())
    chance = majority_chance(train.Y, test.Y)
    assert acc <= chance + 0.05, (acc, chance)


def test_heldout_zero_shot_rows_carry_ranking_auc_and_standard_errors(built):
    home, _ = built
    df = query(
        home,
        "SELECT tree_id, metric, value, chance, stderr, n FROM evaluations "
        "WHERE split = 'holdout' AND method = 'probex-zeroshot'",
    )
    top1, auc = (
        df[df.metric == m].set_index("tree_id") for m in ("heldout_top1", "heldout_ranking_auc")
    )
    assert len(top1) >= 2 and set(auc.index) == set(top1.index), df
    assert (auc.chance == 0.5).all() and auc.value.between(0, 1).all()
    assert (auc.stderr > 0).all() and (auc.n <= top1.n).all()
    p = top1.value
    assert ((p * (1 - p) / top1.n) ** 0.5 - top1.stderr).abs().max() < 1e-9
    search = query(home, "SELECT stderr FROM evaluations WHERE metric = 'heldout_precision_at_10'")
    assert search.stderr.notna().all() and len(search) == 3  # search, search-cosine, text-blind


def test_heldout_zero_shot_values_are_recomputed_from_the_manifest(built, tiny_hub_copy):
    """The held-out rows recomputed independently: the holdout models and their classes from
    the manifest, each model's text-space embedding from the catalog, the held-out names
    through the same encoder, AUC per model by scikit-learn. The LoRA tree (one class per
    model) must rank its held-out class above chance: measured AUC 0.76 on 8 models (FAST,
    seed 0; top-1 is 1 of 8 against a chance of 0.05, too few rows to bound). The 40-class
    trees sit at chance on held-out classes (0.48 here, 0.53-0.55 on the default zoo: the
    open part of the zoo issue), so only their arithmetic is held."""

    from sklearn.metrics import roc_auc_score

    from probex_core.pipeline.labels import text_encoder
    from probex_core.text import class_prompts

    home, _ = built
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    heldout = manifest["heldout_classes"]
    rows = query(
        home,
        "SELECT tree_id, metric, value, n FROM evaluations "
        "WHERE split = 'holdout' AND method = 'probex-zeroshot'",
    )
    emb = query(home, "SELECT repo_id, tree_id, encoder, embedding FROM embeddings")
    models = query(home, "SELECT repo_id, tree_id FROM models").set_index("repo_id").tree_id
    assert set(rows.tree_id) and set(rows.tree_id) <= set(emb.tree_id)
    for tree_id, got in rows.groupby("tree_id"):
        got = got.set_index("metric").value
        held = [
            m
            for m in manifest["models"]
            if m["split"] in ("val_holdout", "test_holdout")
            and models.get(m["repo_id"]) == tree_id
            and set(m["training_classes"]) & set(heldout)
        ]
        mine = emb[emb.tree_id == tree_id].set_index("repo_id")
        E = torch.tensor(np.stack(mine.loc[[m["repo_id"] for m in held]].embedding.to_list()))
        T = text_encoder(home, mine.encoder.iloc[0]).encode(class_prompts(heldout))
        scores = (E.float() @ torch.nn.functional.normalize(T, dim=-1).T).numpy()
        Y = np.array([[c in m["training_classes"] for c in heldout] for m in held])
        both = [i for i in range(len(held)) if 0 < Y[i].sum() < len(heldout)]
        auc = np.mean([roc_auc_score(Y[i], scores[i]) for i in both])
        top1 = np.mean([Y[i, scores[i].argmax()] for i in range(len(held))])
        assert got["heldout_ranking_auc"] == pytest.approx(auc, abs=1e-6), tree_id
        assert got["heldout_top1"] == pytest.approx(top1, abs=1e-9), tree_id
        if len(held[0]["training_classes"]) == 1:  # the LoRA tree
            assert auc >= 0.65, (tree_id, auc)


def test_search_ranks_unknown_names_by_the_zero_shot_log_probability_from_sql(built, tiny_hub_copy):
    """`probex search` for a name no expert knows (a held-out class): every tree's models by
    ln u + log σ(s · cosine − o) from the stored calibration, best first — u the model's
    unknown-class mass (floored at 0.001), s the zero-shot expert's scale over the unknown-text
    temperature; the cosine is that of the text written as the experts' class texts are ("a
    photo of a …"), and the catalog alone answers (no weight is re-read)."""
    from probex_core.pipeline.predict import UNKNOWN_TEXT_TEMPERATURE
    from probex_core.pipeline.query import search_catalog

    home, _ = built
    name = json.loads((tiny_hub_copy / "manifest.json").read_text())["heldout_classes"][0]
    hits = search_catalog(home, name, k=1000)
    emb = query(home, "SELECT * FROM embeddings").set_index("repo_id").loc[hits.repo_id]
    assert len(hits) == len(emb) and hits.tree_id.nunique() >= 2
    assert hits.score.is_monotonic_decreasing and (hits.known_class == "").all()
    spec = TreeExperts(home, hits.tree_id.iloc[0]).meta().encoder
    vec = text_encoder(home, spec).encode([class_prompt(name)])[0].numpy()
    E = np.stack(emb.embedding.to_numpy())
    cos = E @ vec / np.linalg.norm(E, axis=1)
    assert abs(cos - hits.cosine.to_numpy()).max() < 1e-4
    odds = emb.logit_scale.to_numpy() * cos - emb.vocab_lse.to_numpy()
    prior = np.log(np.maximum(emb.unknown_mass.to_numpy(), 0.001))
    assert abs(prior - np.logaddexp(0, -odds) - hits.score.to_numpy()).max() < 1e-4
    assert (emb.logit_scale > 0).all() and emb.vocab_lse.notna().all()
    for tree_id, scale in emb.groupby("tree_id").logit_scale.first().items():
        experts = TreeExperts(home, tree_id)
        zs, _ = experts.load("zeroshot", experts.meta())
        trained = float(zs.zero_shot.log_scale.exp())
        assert scale == pytest.approx(trained / UNKNOWN_TEXT_TEMPERATURE, rel=1e-5), tree_id


def test_search_answers_a_known_class_from_its_trees_classifier(built):
    """A name a tree's expert knows, however it is written ("Red Circle", "red circles"):
    that tree's models rank by ln of the classifier's probability for the class (the
    `predictions` view); a tree that does not know it, and a text near no class name
    ("crimson circle"), by the zero-shot expert."""
    from probex_core.pipeline.query import search_catalog

    home, _ = built
    preds = query(home, "SELECT repo_id, tree_id, probability FROM predictions "
                  "WHERE class_name = 'red circle'").set_index("repo_id")  # fmt: skip
    knowing = set(preds.tree_id)
    assert knowing
    for text in ("Red Circle", "red circles"):
        hits = search_catalog(home, text, k=None)
        by_clf = hits[hits.tree_id.isin(knowing)]
        assert (by_clf.known_class == "red circle").all() and len(by_clf) == len(preds)
        p = preds.probability.loc[by_clf.repo_id].to_numpy()
        assert abs(np.log(p) - by_clf.score.to_numpy()).max() < 1e-4
        assert (hits[~hits.tree_id.isin(knowing)].known_class == "").all()
        assert hits.score.is_monotonic_decreasing
    assert (search_catalog(home, "crimson circle", k=None).known_class == "").all()
    tree = sorted(knowing)[0]
    only = search_catalog(home, "red circle", k=None, tree=tree)
    assert set(only.tree_id) == {tree} and len(only) == (preds.tree_id == tree).sum()


def test_search_precision_rows_are_what_probex_search_returns(built, tiny_hub_copy):
    """`evaluations`' precision@10 for held-out names is the share of `probex search`'s own
    top 10 trained on the name (manifest), and seen names are scored over undocumented
    models, the search above plain cosine and above chance."""
    from probex_core.pipeline.query import search_catalog

    home, _ = built
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    truth = {m["repo_id"]: set(m["training_classes"]) for m in manifest["models"]}
    got = query(home, "SELECT method, metric, value, chance, n FROM evaluations "
                "WHERE metric LIKE '%precision_at_10'").set_index(["metric", "method"])  # fmt: skip
    held = manifest["heldout_classes"]
    mine = np.mean(
        [np.mean([c in truth[r] for r in search_catalog(home, c).repo_id]) for c in held]
    )
    assert got.value["heldout_precision_at_10", "search"] == pytest.approx(mine, abs=1e-9)
    seen = got.loc["seen_precision_at_10"]
    assert seen.value["search"] >= seen.chance["search"] + 0.2, seen
    assert seen.value["search"] > seen.value["search-cosine"], seen


def test_search_for_an_unknown_name_weighs_the_text_by_what_a_model_holds_unknown(
    built, tiny_hub_copy
):
    """Relevance for held-out names: `probex search`'s top 10 (text score plus ln of the
    unknown-class mass) hold the name at least as often as the text score's alone (the
    search before the mass counted). Measured on the tiny zoo: 0.030 against 0.005, chance
    0.018 — its classifiers barely tell a model with unknown classes (text-blind 0.020); on
    the default zoo, seed 0, 0.37 against 0.145 (README)."""
    from probex_core.pipeline.query import search_catalog

    home, _ = built
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    truth = {m["repo_id"]: set(m["training_classes"]) for m in manifest["models"]}
    mass = query(home, "SELECT repo_id, unknown_mass FROM embeddings").set_index("repo_id")
    prior = np.log(np.maximum(mass.unknown_mass, 0.001))
    ours, text, base = [], [], []
    for name in manifest["heldout_classes"]:
        hits = search_catalog(home, name, k=None)
        alone = hits.score - prior.loc[hits.repo_id].to_numpy()
        text_top = hits.repo_id.to_numpy()[np.argsort(-alone.to_numpy(), kind="stable")[:10]]
        ours.append(np.mean([name in truth[r] for r in hits.repo_id[:10]]))
        text.append(np.mean([name in truth[r] for r in text_top]))
        base.append(np.mean([name in truth[r] for r in hits.repo_id]))
    assert np.mean(ours) >= np.mean(text), (ours, text, base)
    assert (hits.score.to_numpy() <= prior.max() + 1e-6).all()


def test_text_blind_ranking_counts_the_classes_a_classifier_does_not_find(built, tiny_hub_copy):
    """`unknown_classes` (the stored `unknown_mass`): the median class count of the tree's
    documented models (from the manifest here) minus the model's summed predicted
    probabilities, at least 0; 1 − the top probability in a tree of one class per model (the
    LoRA tree, whose softmax always sums to 1). `evaluations`' text-blind row is the
    precision@10 of that one ranking for every held-out name."""
    from probex_core.pipeline.evaluate_search import unknown_classes

    home, _ = built
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    truth = {m["repo_id"]: m for m in manifest["models"]}
    found = query(home, "SELECT repo_id, tree_id, sum(probability) AS found, max(probability) "
                  "AS top FROM predictions GROUP BY ALL ORDER BY repo_id")  # fmt: skip
    usual = {
        t: np.median([len(truth[r]["training_classes"]) for r in g.repo_id
                      if truth[r]["documented"] and truth[r].get("parent")])
        for t, g in found.groupby("tree_id")
    }  # fmt: skip
    single = found.tree_id.map(usual).to_numpy() == 1
    assert single.any() and not single.all()
    missed = np.where(single, 1 - found.top, found.tree_id.map(usual) - found.found)
    got = unknown_classes(home, found.repo_id.tolist())
    assert np.allclose(got, np.maximum(missed, 0), atol=1e-4) and len(set(usual.values())) >= 2
    assert got[single].max() > 0.01
    ids = query(home, "SELECT repo_id FROM embeddings").repo_id.tolist()
    top = [ids[i] for i in np.argsort(-unknown_classes(home, ids), kind="stable")[:10]]
    held = manifest["heldout_classes"]
    mine = np.mean([np.mean([c in truth[r]["training_classes"] for r in top]) for c in held])
    row = query(home, "SELECT value FROM evaluations WHERE method = 'text-blind'").value
    assert row.tolist() == pytest.approx([mine], abs=1e-9)


def test_readme_queries_answer_and_agree_with_the_ground_truth(built, tiny_hub_copy):
    """Each SQL block of the README runs, and what it says holds against the manifest."""
    home, _ = built
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```sql\n")[1:]]
    assert len(blocks) == 6
    trees, routed, predicted, scores, holdout, neighbours = (
        query(home, sql.strip().rstrip(";")) for sql in blocks
    )
    for df in (trees, routed, predicted, scores, holdout, neighbours):
        assert len(df) > 0
    manifest = json.loads((tiny_hub_copy / "manifest.json").read_text())
    truth = {m["repo_id"]: m for m in manifest["models"]}
    assert trees["size"].sum() == len(truth)
    assert (trees.n_documented + trees.n_undocumented == trees["size"]).all()
    assert (routed.routed_tree == routed.tree_id).all()  # measured: routing accuracy 1.0
    assert all(not truth[r]["documented"] for r in routed.repo_id)
    right = [("blue cross" in truth[r]["training_classes"]) for r in predicted.repo_id]
    assert sum(right) / len(right) >= 0.8 and (predicted.confidence > 0.5).all()
    full = set(trees.tree_id[trees.kind == "full"])  # one-class trees are judged by top-1
    per_tree = scores[(scores.method == "probex") & scores.tree_id.isin(full)]
    assert len(per_tree) >= 1 and (per_tree.per_class_accuracy > per_tree.chance).all()
    assert {"heldout_ranking_auc", "heldout_top1", "heldout_precision_at_10"} <= set(holdout.metric)
    assert neighbours.similarity.iloc[0] == pytest.approx(1.0)  # the query model itself
    assert neighbours.similarity.is_monotonic_decreasing


def test_rejected_repo_is_recorded_and_others_survive(tiny_hub_copy, tmp_path):
    hub = tmp_path / "hub"
    shutil.copytree(tiny_hub_copy / "hub", hub)
    bad = hub / "mallory" / "broken"
    bad.mkdir(parents=True)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    home = Home(tmp_path / "home")
    from probex_core.hub import make_source

    report = pipeline.crawl(home, make_source(str(hub)))
    assert report.summary["rejected"] == 1
    assert report.summary["repos"] == len(list((tiny_hub_copy / "hub").glob("*/*")))
    from probex_core.catalog import refresh_views

    refresh_views(home)
    rej = query(home, "SELECT repo_id, path, reason FROM rejected_repos")
    assert rej.repo_id.tolist() == ["mallory/broken"]
    assert "model.safetensors" in rej.path.iloc[0] and rej.reason.iloc[0]


def _materialisations(instance, asset: str) -> dict[str, int]:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records
    counts: dict[str, int] = {}
    for r in records:
        counts[r.partition_key] = counts.get(r.partition_key, 0) + 1
    return counts


def _card_times(home: Home) -> dict[str, int]:
    """Each generated card's repo id → its file's modification time (ns)."""
    root = home.root / "cards"
    return {str(p.parent.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("README.md")}


def test_changing_one_tree_rebuilds_only_that_tree(built, tiny_hub_copy, tmp_path):
    """On copies of the built home and of its hub (copies keep file times, so every tree's
    version is unchanged): one new fine-tune rebuilds its tree's experts and no other tree's
    (materialisations counted per partition) and rewrites that tree's model cards and no
    other's, then an unchanged hub rebuilds nothing."""
    from orchestration.runner import instance_for, run_all

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_hub_copy, zoo)
    src, _ = built
    shutil.copytree(src.root, tmp_path / "home")
    home = Home(tmp_path / "home")
    trees = sorted(pipeline.stale_trees(home).wanted)
    assert len(trees) >= 3 and pipeline.stale_trees(home).stale == []
    before = _materialisations(instance_for(home), "tree_experts")
    cards = _card_times(home)

    # Add one new fine-tune to one tree: a copy of a documented member, slightly perturbed.
    manifest = json.loads((zoo / "manifest.json").read_text())
    donor = next(
        m
        for m in manifest["models"]
        if m["split"] == "train" and m["tree_id"] == manifest["trees"][0]["tree_id"]
    )
    src = zoo / "hub" / donor["repo_id"]
    dst = zoo / "hub" / "newcomer" / "fresh-finetune"
    shutil.copytree(src, dst)
    weights = next(p for p in dst.glob("*.safetensors"))
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    g = torch.Generator().manual_seed(1)
    tensors = {
        k: v + 1e-3 * v.std() * torch.randn(v.shape, generator=g) for k, v in tensors.items()
    }
    save_file(tensors, str(weights), metadata=meta)

    second = run_all(home, str(zoo / "hub"), training=ExpertTraining(**SHORT))
    assert len(second["built"]) == 1, second["built"]
    changed = second["built"][0]
    counts = _materialisations(instance_for(home), "tree_experts")
    assert counts[changed] == before[changed] + 1
    assert {t: n for t, n in counts.items() if t != changed} == {
        t: n for t, n in before.items() if t != changed
    }
    assert (
        query(
            home, "SELECT tree_id FROM models WHERE repo_id = 'newcomer/fresh-finetune'"
        ).tree_id.iloc[0]
        == changed
    )
    # the rebuilt expert refreshed exactly its tree's model cards
    after = _card_times(home)
    assert after.keys() == cards.keys()
    rewritten = {r for r in cards if after[r] != cards[r]}
    tree_of = read_table(home, "model_cards").set_index("repo_id").tree_id
    assert rewritten == {r for r in cards if tree_of[r] == changed} != set()

    recovered = (home.artifacts / "trees.json").stat().st_mtime_ns
    third = run_all(home, str(zoo / "hub"), training=ExpertTraining(**SHORT))
    assert third["built"] == [], "an unchanged hub rebuilds nothing"
    # not even its trees: the recovery of the same crawled records is kept as it was
    assert (home.artifacts / "trees.json").stat().st_mtime_ns == recovered
    assert read_table(home, "tree_members").repo_id.nunique() == len(manifest["models"]) + 1


def test_expert_code_version_change_marks_every_tree_stale(built, monkeypatch):
    home, _ = built
    assert pipeline.stale_trees(home).stale == []
    monkeypatch.setitem(pipeline.CODE_VERSIONS, "tree_experts", "changed")
    plan = pipeline.stale_trees(home)
    assert sorted(plan.stale) == sorted(plan.wanted) and len(plan.wanted) >= 3


def test_sensor_requests_exactly_the_stale_trees(built, tmp_path):
    from assets.partitions import register_trees
    from orchestration.sensors import plan_rebuilds

    home = copy_home(built[0], tmp_path / "home")
    plan = pipeline.stale_trees(home)
    instance = dg.DagsterInstance.ephemeral()
    assert register_trees(instance, plan.wanted) == list(plan.wanted)
    assert register_trees(instance, plan.wanted) == []  # each tree registered once
    assert isinstance(plan_rebuilds(home, instance), dg.SkipReason)
    victim = sorted(plan.wanted)[0]
    meta = home.expert_dir(victim) / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": "outdated"}))
    result = plan_rebuilds(home, instance)
    assert [r.partition_key for r in result.run_requests] == [victim]


PARTITION_RUN = """
import sys
import dagster as dg
from orchestration.definitions import rebuild_job_from_env
from orchestration.runner import instance_for
from orchestration.sensors import FORKSERVER_EXECUTION
from probex_core.catalog import Home

home = Home(sys.argv[1])
# the job's own execution config (steps forked from a preloaded server); SHORT training:
# this run checks concurrent writers, not accuracy
run_config = {
    **FORKSERVER_EXECUTION,
    "ops": {"tree_experts": {"config": {"epochs": 20, "sweep_epochs": 5, "val_every": 5}}},
}
with dg.execute_job(
    dg.reconstructable(rebuild_job_from_env),
    instance=instance_for(home),
    run_config=run_config,
    tags={"dagster/partition": sys.argv[2]},
) as result:
    sys.exit(0 if result.success else 1)
"""


def test_three_tree_partitions_at_once_with_the_multiprocess_executor(built, tmp_path):
    """Three runs at once, each stepping in subprocesses: parallel partitions write their own
    Parquet parts and never take DuckDB's single-writer lock, so none fails on it. On a copy
    of the built home with every tree's layers and experts removed, so what is there at the
    end is what the three processes wrote (and the shared home stays as built)."""
    src, _ = built
    home = copy_without_trees(src, tmp_path / "home")
    trees = sorted(pipeline.stale_trees(home).wanted)
    assert len(trees) == 3 and sorted(pipeline.stale_trees(home).stale) == trees
    env = {**os.environ, "PROBEX_HOME": str(home.root), "PROBEX_HUB": str(built_hub(src))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PARTITION_RUN, str(home.root), tree],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tree in trees
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for tree, p, out in zip(trees, procs, outputs, strict=True):
        assert p.returncode == 0, f"{tree}: {out[-3000:]}"
        assert "Could not set lock" not in out
    trained = {
        t
        for t in trees
        if not json.loads((home.expert_dir(t) / "meta.json").read_text()).get("skipped")
    }
    assert len(trained) == 2
    from probex_core.catalog import read_table, refresh_views

    assert set(read_table(home, "expert_results").tree_id) == trained
    # nothing half-written, every tree consistent, and the catalog still opens and answers
    assert not [p for p in home.root.rglob("*.tmp") if "dagster" not in p.parts]
    assert pipeline.stale_trees(home).stale == []
    for tree in trees:
        assert pipeline.verify_layers(home, tree) == [], tree
    refresh_views(home)
    assert set(query(home, "SELECT DISTINCT tree_id FROM experts").tree_id) == trained


def copy_home(src: Home, dst: Path) -> Home:
    """A private, complete copy of a built home (the shared one is read-only)."""
    shutil.copytree(src.root, dst)
    return Home(dst)


def copy_without_trees(src: Home, dst: Path) -> Home:
    """A copy of a built home (no DuckDB file) with every tree's layers and experts removed:
    every tree stale, so what is there after a rebuild is what the rebuild wrote."""
    shutil.copytree(src.root, dst, ignore=shutil.ignore_patterns("*.duckdb*"))
    for gone in ("artifacts/layers", "artifacts/experts", "tables/expert_results"):
        shutil.rmtree(dst / gone)
    return Home(dst)


def built_hub(home: Home) -> Path:
    """The hub a built home was crawled from (recorded by the runner)."""
    from probex_core.pipeline.query import last_run_hub

    return Path(last_run_hub(home))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probex_ui_serves_the_assets_on_loopback(tmp_path):
    """`probex ui` (dg dev on the home's instance) listens on 127.0.0.1 unless told
    otherwise, and serves every asset over GraphQL."""
    from orchestration.cli import build_parser, ui_command

    args = build_parser().parse_args(["ui", "--port", str(_free_port())])
    assert args.host == "127.0.0.1"
    argv, env = ui_command(Home(tmp_path / "home"), args.host, args.port)
    assert argv[argv.index("-h") + 1] == "127.0.0.1"
    port = args.port
    http = requests.Session()
    http.trust_env = False  # a proxy in the environment must not take 127.0.0.1
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,  # not the checkout: the installed package is what it serves
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        query_text = "{ assetNodes { assetKey { path } groupName } }"
        deadline = time.monotonic() + 120
        nodes = None
        while time.monotonic() < deadline:
            try:
                r = http.post(
                    f"http://127.0.0.1:{port}/graphql", json={"query": query_text}, timeout=5
                )
                data = r.json().get("data") or {}
                if data.get("assetNodes"):
                    nodes = data["assetNodes"]
                    break
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            time.sleep(1)
        assert nodes, "webserver did not answer with asset nodes"
        names = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {
            "hub_repos",
            "model_trees",
            "tree_layers",
            "tree_experts",
            "model_predictions",
            "evaluations",
        } <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_a_run_says_what_it_does_and_ends_with_one_row_per_tree(built):
    """Progress lines for the crawl and the experts, trees named by their root repo, the
    skipped tree (mlp-b: 19 documented models < 40) with its reason in the run and in the
    closing summary, which has one row per tree."""
    from orchestration.cli import _summary

    home, result = built
    out = result["output"]
    assert "crawled 242 repos (0 rejected)" in out
    assert "experts: layer fc2 chosen; training ProbeX and baselines" in out
    assert re.search(r"tree \d/3 foundation-lab/mlp-alpha \(tree-[0-9a-f]{12}\)", out)
    reason = re.search(r"no expert: (\d+ documented models < 40 needed for an expert)", out)
    assert reason, out
    assert f"warning: openvision/mlp-base: skipped: {reason.group(1)}" in out
    assert result["warnings"] and all(result["checks"].values())
    summary = _summary(home)
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "tree-" in line]
    trees = query(home, "SELECT tree_id, name FROM trees")
    assert len(rows) == len(trees) == 3
    for tree_id, name in zip(trees.tree_id, trees.name, strict=True):
        (row,) = [r for r in rows if tree_id in r]
        assert row.startswith(f"| {name} ")
    (skipped,) = [r for r in rows if "openvision/mlp-base" in r]
    assert reason.group(1) in skipped


def test_every_tree_with_an_expert_beats_chance_by_a_measured_margin(built):
    """Each trained tree on its headline test metric (the run's summary): ProbeX per-class
    accuracy at least 0.15 over chance (tiny zoo, FAST: mlp-a measured 0.855 against 0.478),
    top-1 of the one-class LoRA tree at least 0.08 over chance (measured 0.143 against 0.021
    with 20 epochs); ProbeX also beats StatNN there. A skipped tree has no row to check."""
    home, _ = built
    rows = query(home, load_sql("report_summary"))
    trained = rows[rows.note == ""]
    assert len(trained) == 2, rows
    margin = {"per_class_accuracy": 0.15, "top1": 0.08}
    for r in trained.itertuples():
        assert r.probex >= r.chance + margin[r.metric], r
        assert r.probex > r.statnn, r


def test_search_hits_are_models_trained_on_the_text(built, tiny_hub_copy):
    """Relevance, not arithmetic: for five seen classes, the share of the top 10 whose ground
    truth (manifest) holds the class beats the share among all models. Measured on the tiny
    zoo: 1.0 against 0.30 (100 epochs; the trees' classifiers answer these names, and before
    they did, the zero-shot experts alone gave 0.54)."""
    from probex_core.pipeline.query import search_catalog

    home, _ = built
    truth = {
        m["repo_id"]: set(m["training_classes"])
        for m in json.loads((tiny_hub_copy / "manifest.json").read_text())["models"]
    }
    queries = ["red circle", "blue star", "green square", "yellow heart", "purple ring"]
    hits, base = [], []
    for q in queries:
        top = search_catalog(home, q, k=10).repo_id
        hits.append(sum(q in truth[r] for r in top) / 10)
        base.append(sum(q in c for c in truth.values()) / len(truth))
    assert sum(hits) / len(hits) >= sum(base) / len(base) + 0.3, (hits, base)
