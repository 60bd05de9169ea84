"""The results report: written by the evaluations step and by `probex report`, its numbers
the catalog's, and honest about what it cannot fill."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from orchestration.cli import main
from probex_core.catalog import Home, query, read_table, refresh_views, write_table
from probex_core.pipeline.report import CLASSIFIERS, build_report, write_report
from tests.test_pipeline import copy_home

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_evaluations_step_writes_the_report_with_its_plots(built) -> None:
    home, _ = built
    text = (home.root / "report" / "report.md").read_text()
    assert text.startswith("# probex results report")
    assert "- zoo: preset tiny, seed 0" in text
    for name in ("accuracy.png", "layer_sweep.png"):
        assert (home.root / "report" / name).read_bytes().startswith(PNG), name
        assert f"![{name}]({name})" in text


def test_every_accuracy_in_the_report_is_the_catalogs(built) -> None:
    home, _ = built
    report = build_report(home, measure_speed=False)
    acc = report.section("Discriminative accuracy per tree").table
    assert acc is not None
    trained = query(home, "SELECT name, tree_id FROM trees WHERE expert_status = 'trained'")
    assert sorted(acc.tree) == sorted(trained.name)
    ev = query(home, "SELECT * FROM evaluations WHERE split = 'test'")
    for row in acc.to_dict("records"):
        tree_id = trained.set_index("name").tree_id[row["tree"]]
        for title, method in CLASSIFIERS:
            want = ev[
                (ev.tree_id == tree_id) & (ev.method == method) & (ev.metric == row["metric"])
            ]
            assert row[title] == pytest.approx(want.value.iloc[0]), title
    # one-class-per-model trees (LoRA) are scored by top-1, the others per class
    lora = query(home, "SELECT name FROM trees WHERE kind = 'lora'").name.iloc[0]
    assert acc.set_index("tree").metric[lora] == "top1"
    sweep = report.section("Layer sweep").table
    chosen = sweep[sweep.chosen]
    assert dict(zip(chosen.tree, chosen.layer, strict=True)) == dict(
        query(
            home, "SELECT name, expert_layer FROM trees WHERE expert_status = 'trained'"
        ).itertuples(index=False)
    )


def test_probex_report_writes_the_file_and_prints_it(built, monkeypatch, capsys, tmp_path):
    home = copy_home(built[0], tmp_path / "home")
    monkeypatch.setenv("PROBEX_HOME", str(home.root))
    (home.root / "report" / "report.md").unlink()
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    text = (home.root / "report" / "report.md").read_text()
    assert text in out and "report written to" in out
    cost = text.split("## Cost per method")[1].split("##")[0]
    assert "models/s" in cost and "s/epoch" in cost  # timed, and epochs recorded at training
    assert "| nan" not in cost.split("ridge")[0]  # every trained expert has its epoch time


def test_a_home_without_ground_truth_says_which_tables_it_cannot_fill(built, tmp_path) -> None:
    src, _ = built
    shutil.copytree(src.root, tmp_path / "home", ignore=shutil.ignore_patterns("*.duckdb*"))
    home = Home(tmp_path / "home")
    rows = read_table(home, "evaluation_rows")
    write_table(home, "evaluation_rows", rows[rows.split == "val"])  # what a hub without truth has
    (home.root / "run.json").unlink()
    refresh_views(home)
    report = build_report(home, measure_speed=False)
    for title in ("Discriminative accuracy per tree", "Zero-shot and text search"):
        section = report.section(title)
        assert section.table is None and "no ground truth" in section.note, title
    assert report.section("Layer sweep").table is not None  # needs no ground truth
    assert report.header["zoo"].startswith("no zoo manifest")
    text = write_report(home, report).read_text()
    assert "Cannot fill: the hub has no ground truth" in text
    assert isinstance(report.section("Cost per method").table, pd.DataFrame)


def test_experiments_reproduce_the_expert_and_fill_their_sections(
    built, tmp_path, monkeypatch
) -> None:
    """The ablation at the experts' own ranks is the tree's shared ProbeX (same data, seed and
    warm starts: the same test score); the shared model is scored on every trained tree."""
    import functools

    from probex_core.pipeline import experiments
    from probex_core.pipeline.experiments import run_experiments_on_home

    # the SANE-style learner for 10 epochs, not 30: its codes keep the class signal on the
    # tiny zoo all the same (measured: mlp-a 0.77, LoRA top-1 0.50), 9 s sooner
    monkeypatch.setattr(
        experiments, "SaneConfig", functools.partial(experiments.SaneConfig, epochs=10)
    )

    src, _ = built
    shutil.copytree(src.root, tmp_path / "home", ignore=shutil.ignore_patterns("*.duckdb*"))
    home = Home(tmp_path / "home")
    refresh_views(home)
    run_experiments_on_home(home)
    ran = query(home, "SELECT * FROM raw_report_experiments")
    trained = set(query(home, "SELECT tree_id FROM trees WHERE expert_status = 'trained'").tree_id)
    assert set(ran.tree_id) == trained
    own = query(
        home, "SELECT tree_id, metric, value FROM evaluations WHERE method = 'probex-shared'"
    )
    for tree_id in trained:
        mine = ran[(ran.tree_id == tree_id) & (ran.experiment == "probes")]
        assert len(mine) == 7  # r_U 1, 8, 32, 128 at r_T 128; r_T 16, 512 at r_U 32; budget
        budget = mine[mine.setting == "r_U=8 r_V=32 r_T=80"].params.iloc[0]
        assert budget < mine[mine.setting == "r_U=8 r_T=128"].params.iloc[0]
        same = mine[mine.setting == "r_U=32 r_T=128"].iloc[0]
        want = own[(own.tree_id == tree_id) & (own.metric == same.metric)].value.iloc[0]
        assert same.value == pytest.approx(want, abs=1e-6)
        by_probes = mine[mine.setting.str.endswith("r_T=128")].params.tolist()
        assert by_probes == sorted(by_probes) and len(set(by_probes)) == 4  # more probes, more
    multiview = ran[ran.experiment == "multiview"]
    assert sorted(multiview.tree_id) == sorted(trained)  # one multi-view ProbeX per tree
    assert (multiview.value > multiview.chance).all()
    shared = ran[ran.experiment == "shared"]
    assert set(shared.tree_id) == trained and shared.params.nunique() == 1
    report = build_report(home, measure_speed=False)
    assert report.section("Probes ablation").table is not None
    table = report.section("Per-tree experts against cross-tree learners").table
    assert len(table) == len(trained)
    assert table[["expert per tree", "multi-view expert per tree"]].notna().all().all()
    sane = ran[ran.experiment == "sane"]
    assert set(sane.tree_id) == trained and sane.groupby("tree_id").size().eq(3).all()
    # its token codes keep the class signal: measured on the tiny zoo at 10 epochs, mlp-a
    # 0.77 against chance 0.48, LoRA top-1 0.50 against 0.02
    codes = sane[sane.setting.str.endswith("(codes)")]
    assert (codes.value > codes.chance + 0.1).all(), codes
    assert table["SANE-style, ridge on token codes"].notna().all()
    official = ran[ran.experiment == "official"]
    assert set(official.tree_id) == trained and official.setting.str.startswith("raw").all()
    # the paper's ranks (128 probes, projection 128, representation 512): ~8.4 M parameters
    assert (official.params > 8_000_000).all()
    assert report.section("The official ProbeX protocol beside ours").table is not None
    cost = report.section("Cost of the experiments' models").table.set_index("experiment")
    assert len(cost) == 4 and (cost.s_per_epoch > 0).all() and (cost.models_per_second > 0).all()
    assert cost.parameters["official ProbeX protocol (per tree)"] == official.params.min()
