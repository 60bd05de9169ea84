"""Step 4 (per tree): layer sweep, ProbeX experts (classification, zero-shot), baselines."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from probex_core.catalog import Home, read_table, write_table
from probex_core.digest import digest
from probex_core.metrics import per_class_accuracy, topk_accuracy
from probex_core.models import TextHeadConfig, build_model, count_parameters
from probex_core.pipeline.common import (
    CODE_VERSIONS,
    ExpertSettings,
    Progress,
    StepReport,
    png,
)
from probex_core.pipeline.labels import majority_chance, split_members, text_encoder, tree_labels
from probex_core.pipeline.starts import encoder_state, probex_starts, warm_probex
from probex_core.ridge import RidgeResult
from probex_core.schemas import frame
from probex_core.store import (
    ExpertMeta,
    TreeExperts,
    TreeLayers,
)
from probex_core.train import (
    TensorData,
    fit_temperature,
    predict_logits,
    predict_proba,
    train_expert,
)
from probex_core.zeroshot import ZeroShotConfig, class_lists, train_zero_shot_expert

BASELINES = ("statnn", "dense")


def _plot(tree_id: str, curve: dict[str, float], history: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    a.bar(range(len(curve)), list(curve.values()))
    a.set_xticks(range(len(curve)), list(curve), rotation=45, ha="right", fontsize=7)
    a.set_ylabel("val per-class acc")
    a.set_title(f"{tree_id}: layer sweep")
    a.set_ylim(min(curve.values()) - 0.05, 1.0)
    b.plot([h["epoch"] for h in history], [h["val"] for h in history], marker="o")
    b.set_xlabel("epoch")
    b.set_title("ProbeX validation")
    return png(fig)


@dataclass
class _ExpertRun:
    """One tree's expert training as it goes: where it writes, what it has written, and the
    rows of `expert_results`."""

    home: Home
    tree_id: str
    settings: ExpertSettings
    layer: str
    classes: list[str]
    single_label: bool
    train: TensorData
    val: TensorData
    meta: ExpertMeta  # what is known before training; completed at the end
    results: list[dict] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, dict] = field(default_factory=dict)

    @property
    def experts(self) -> TreeExperts:
        return TreeExperts(self.home, self.tree_id)

    def save(self, key: str, model, **extra) -> str:
        """Write one checkpoint as `<key>.safetensors`; returns its file name."""
        self.checkpoints[key] = self.experts.save(key, model, {**self.meta.to_json(), **extra})
        return self.checkpoints[key]

    def record(
        self, method: str, objective: str, metric: str, value: float, chance: float, ckpt: str
    ) -> None:
        self.results.append(
            {
                "tree_id": self.tree_id,
                "method": method,
                "objective": objective,
                "layer": self.layer,
                "metric": metric,
                "value": float(value),
                "chance": float(chance),
                "n_train": len(self.train),
                "n_val": len(self.val),
                "encoder": self.settings.encoder,
                "checkpoint": ckpt,
                "code_version": CODE_VERSIONS["tree_experts"],
            }
        )

    def record_classifier(self, method: str, model, ckpt: str, chance: float) -> None:
        """Calibrate a classifier on validation and record its validation scores."""
        self.calibration[method] = calibrate(model, self.val, self.single_label)
        probs = predict_proba(model, self.val).numpy()
        Y = self.val.Y.numpy()
        self.record(method, "classify", "val_per_class_accuracy",
                    per_class_accuracy(Y, probs), chance, ckpt)  # fmt: skip
        if self.single_label:
            self.record(method, "classify", "val_top1", topk_accuracy(probs, Y, 1),
                        1 / len(self.classes), ckpt)  # fmt: skip


def train_experts(
    home: Home, tree_id: str, settings: ExpertSettings, progress: Progress | None = None
) -> StepReport:
    """Sweep the tree's candidate layers, then on the best one train ProbeX (warm-started
    from the ridge read-out), its baselines and the zero-shot expert; write checkpoints,
    meta.json and the tree's rows of `expert_results`, `layer_sweep` and `expert_status`."""
    index = TreeLayers(home, tree_id).index()
    repo_ids = index["repo_ids"]
    classes, rows, Y = tree_labels(home, repo_ids)
    if len(rows) < settings.min_documented or not classes:
        return skip_tree(home, tree_id, index, len(rows), settings)
    tr, va, split_from = split_members(
        home, [repo_ids[i] for i in rows], settings.val_fraction, settings.seed
    )
    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    single_label = bool((Y.sum(1) == 1).all())
    splits = _layer_data(home, tree_id, index["layers"], [rows[i] for i in tr],
                         [rows[i] for i in va], Y[tr], Y[va])  # fmt: skip
    say(
        f"experts: {len(rows)} documented models ({len(tr)} train, {len(va)} val), "
        f"{len(classes)} classes; sweeping {len(splits)} layers ({settings.sweep_epochs} epochs)"
    )
    layer, curve, ridge = _sweep(splits, len(classes), settings, single_label)
    run = _ExpertRun(
        home, tree_id, settings, layer, classes, single_label, *splits[layer],
        meta=ExpertMeta(
            tree_id, index["version"], CODE_VERSIONS["tree_experts"], layer=layer,
            classes=tuple(classes), encoder=settings.encoder, settings=asdict(settings),
        ),
    )  # fmt: skip
    run.experts.dir.mkdir(parents=True, exist_ok=True)
    say(f"experts: layer {layer} chosen; training ProbeX and baselines ({settings.epochs} epochs)")
    trained, skipped = _train_classifiers(run, ridge)
    say("experts: training the zero-shot expert (text space)")
    # from the ± pair start: from offset units the text head stayed at chance
    start = trained.get("probex-pairs", trained["probex"])
    chosen = _train_zero_shot(run, encoder_state(start.model))
    run.meta = replace(
        run.meta,
        checkpoints=run.checkpoints,
        calibration=run.calibration,
        sweep=curve,
        seconds=time.perf_counter() - t0,
        split_from=split_from,
        train_repos=tuple(repo_ids[rows[i]] for i in tr),
        val_repos=tuple(repo_ids[rows[i]] for i in va),
        single_label=single_label,
        zero_shot_loss=chosen,
    )
    return _write_tree_results(run, curve, trained["probex"].history, skipped)


def _layer_data(home, tree_id, layers, train_rows, val_rows, Y_train, Y_val):
    """Per candidate layer, (train, val) TensorData read from the tree's layer stacks."""

    def data(layer: str, idx: list[int], Y: torch.Tensor) -> TensorData:
        return TensorData(TreeLayers(home, tree_id).read(layer, idx), Y)

    return {n: (data(n, train_rows, Y_train), data(n, val_rows, Y_val)) for n in layers}


def _sweep(splits: dict, n_classes: int, settings: ExpertSettings, single_label: bool):
    """A short warm-started ProbeX per layer; the best on validation is the tree's layer.
    It starts in ± pairs, as the zero-shot expert's encoder does: the layer serves both
    experts. (On the tiny zoo's LoRA tree, offset starts tied the two layers at 2 of 14
    validation adapters and the sweep took fc1, where the zero-shot expert read 1 of 14
    against 9 of 14 on fc2.) Returns (layer, validation score per layer, its ridge read-out)."""
    objective = "single" if single_label else "classify"
    cfg = settings.train_config(objective, sweep=True)
    swept = {
        n: warm_probex(a, b, n_classes, cfg, settings, single_label, units="pairs")
        for n, (a, b) in splits.items()
    }
    curve = {n: r.best_metric for n, (_, r) in swept.items()}
    layer = max(curve, key=curve.__getitem__)
    return layer, curve, swept[layer][0]


def _train_classifiers(run: _ExpertRun, ridge: RidgeResult) -> tuple[dict, list[str]]:
    """ProbeX from both warm starts and the better (`probex_starts`; default zoo, seeds 0 / 1:
    offset led on the multi-class trees, LoRA top-1 0.554 / 0.508 against pairs' 0.523 /
    0.615), the paper's ProbeX from random probes, the baselines and the ridge read-out:
    each saved, calibrated and recorded. Returns the ProbeX results by method and what was
    skipped (Dense over its size cap)."""
    settings, n = run.settings, len(run.classes)
    d_H, d_W = run.train.shape
    chance = majority_chance(run.train.Y, run.val.Y)
    cfg = settings.train_config("single" if run.single_label else "classify")
    trained = probex_starts(run.train, run.val, n, cfg, settings, run.single_label, ridge)
    models = {"probex-scratch": build_model(settings.probex, d_H, d_W, n, seed=settings.seed)}
    skipped = []
    for kind in BASELINES:
        if kind == "dense" and d_H * d_W * n > settings.dense_max_params:
            skipped.append(f"dense skipped: {d_H}x{d_W}x{n} > {settings.dense_max_params} params")
            continue
        models[kind] = build_model(kind, d_H, d_W, n, seed=settings.seed)
    for method in (*trained, *models):
        res = trained.get(method) or train_expert(models[method], run.train, run.val, cfg)
        ckpt = run.save(method, res.model, method=method, params=count_parameters(res.model),
                        epoch_seconds=round(res.epoch_seconds, 5))  # fmt: skip
        run.record_classifier(method, res.model, ckpt, chance)
    # the closed-form ridge read-out: the warm start, and a cheap linear bar beside the experts
    ckpt = run.save("ridge", ridge.model, method="ridge", ridge_lambda=ridge.ridge)
    run.record_classifier("ridge", ridge.model, ckpt, chance)
    return trained, skipped


def _train_zero_shot(run: _ExpertRun, init: dict[str, torch.Tensor]) -> str:
    """The zero-shot expert (weights → text space) through `zeroshot.train_zero_shot_expert`,
    its encoder started from `init`. One class per model: the paper's
    softmax head; several: the multi-label (BCE) head beside it, and the better on
    validation becomes the tree's zero-shot expert. Returns the loss chosen."""
    settings = run.settings
    encoder = text_encoder(run.home, settings.encoder)
    present = run.val.Y[:, run.val.Y.sum(0) > 0]
    if run.single_label:  # top-1 among the candidates; a random guess is right this often
        metric, chance = "val_zero_shot_top1", float((present.sum(1) / present.shape[1]).mean())
    else:
        metric, chance = "val_zero_shot_ranking_auc", 0.5
    train = (run.train.X, class_lists(run.train.Y, run.classes))
    val = (run.val.X, class_lists(run.val.Y, run.classes))
    scores = {}
    for loss in ("softmax",) if run.single_label else ("softmax", "bce"):
        cfg = ZeroShotConfig(
            model=settings.probex,
            text_head=TextHeadConfig(direction="weight_to_text"),
            train=replace(settings.train_config("zeroshot"), zs_loss=loss),
            seed=settings.seed,
        )
        expert = train_zero_shot_expert(train, val, encoder, cfg, init=init)
        ckpt = run.save(f"zeroshot-{loss}", expert.model,
                        method=f"probex-zeroshot-{loss}", encoder_name=encoder.name)  # fmt: skip
        scores[loss] = expert.result.best_metric
        run.record(f"probex-zeroshot-{loss}", "zeroshot", metric, scores[loss], chance, ckpt)
    chosen = max(scores, key=scores.__getitem__)
    run.checkpoints["zeroshot"] = run.checkpoints[f"zeroshot-{chosen}"]
    run.record("probex", "zeroshot", metric, scores[chosen], chance, run.checkpoints["zeroshot"])
    return chosen


def _write_tree_results(
    run: _ExpertRun, curve: dict[str, float], history: list[dict], skipped: list[str]
) -> StepReport:
    home, tree_id, meta = run.home, run.tree_id, run.meta
    run.experts.write_meta(meta)
    write_status(home, tree_id, "trained", None, run.layer)
    res_df = frame(run.results, "expert_results")
    write_table(home, "expert_results", res_df, part=tree_id)
    sweep = [{"tree_id": tree_id, "layer": n, "method": "probex", "val_metric": v}
             for n, v in curve.items()]  # fmt: skip
    write_table(home, "layer_sweep", frame(sweep, "layer_sweep"), part=tree_id)
    return StepReport(
        summary={
            "tree_id": tree_id,
            "layer": run.layer,
            "classes": len(run.classes),
            "n_train": len(run.train),
            "n_val": len(run.val),
            "seconds": round(meta.seconds, 1),
            "notes": "; ".join(skipped) or "none",
            # the layer sweep as numbers: the UI shows short values inline (and plots them
            # across materialisations), while the PNG below sits behind "[Show Markdown]"
            **{f"sweep {n}": round(v, 4) for n, v in curve.items()},
        },
        tables={"results": res_df[["method", "objective", "metric", "value", "chance"]]},
        plots={"layer sweep and validation curve": _plot(tree_id, curve, history)},
        curves={
            "ProbeX validation by epoch": (
                [float(h["epoch"]) for h in history],
                [float(h["val"]) for h in history],
            )
        },
        data_version=digest(meta.version, res_df.value.round(6).tolist()),
    )


def write_status(
    home: Home, tree_id: str, status: str, reason: str | None, layer: str | None
) -> None:
    """One row of `expert_status`: whether the tree got experts ("trained") or not
    ("skipped", with the reason), and the layer they read."""
    row = {"tree_id": tree_id, "status": status, "reason": reason, "layer": layer}
    write_table(home, "expert_status", frame([row], "expert_status"), part=tree_id)


def calibrate(model, val: TensorData, single_label: bool) -> dict:
    """The temperature (fitted on validation) and output rule of one classifier, as stored in
    meta.json["calibration"][method] and read back by `Calibration.from_meta`."""
    logits = predict_logits(model, val)
    return {"temperature": fit_temperature(logits, val.Y, single_label), "softmax": single_label}


def skip_tree(home: Home, tree_id: str, index: dict, n_documented: int, settings) -> StepReport:
    """Too few documented models to learn from: no expert, said plainly (and not retried
    until the tree changes). Its models are still routed; they get no class predictions."""
    experts = TreeExperts(home, tree_id)
    experts.dir.mkdir(parents=True, exist_ok=True)
    reason = f"{n_documented} documented models < {settings.min_documented} needed for an expert"
    experts.remove_checkpoints()
    experts.write_meta(
        ExpertMeta(tree_id, index["version"], CODE_VERSIONS["tree_experts"], skipped=reason)
    )
    write_table(home, "expert_results", frame([], "expert_results"), part=tree_id)
    write_table(home, "layer_sweep", frame([], "layer_sweep"), part=tree_id)
    write_status(home, tree_id, "skipped", reason, None)
    return StepReport(
        summary={"tree_id": tree_id, "skipped": reason}, data_version=index["version"]
    )


def verify_experts(home: Home, tree_id: str) -> tuple[list[str], dict]:
    """The blocking gate: finite weights, and ProbeX above chance on validation."""
    experts = TreeExperts(home, tree_id)
    meta = experts.meta()
    if meta.skipped:
        return [], {"skipped": meta.skipped}
    problems = []
    for method in meta.checkpoints:
        model, _ = experts.load(method, meta)
        bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
        if bad:
            problems.append(f"{method}: non-finite weights in {bad[:3]}")
    res = read_table(home, "expert_results")
    res = res[(res.tree_id == tree_id) & (res.method == "probex")]
    facts = {}
    # one class per model (LoRA-style trees): per-class accuracy is ~1 for any all-negative
    # guess, so the gate reads top-1 instead
    gated = ("val_top1",) if meta.single_label else ("val_per_class_accuracy",)
    for metric in (*gated, "val_zero_shot_top1", "val_zero_shot_ranking_auc"):
        r = res[res.metric == metric]
        if r.empty:
            continue
        value, chance = float(r.value.iloc[0]), float(r.chance.iloc[0])
        facts[metric] = value
        facts[f"{metric}_chance"] = chance
        margin = 0.02 if metric == "val_per_class_accuracy" else 0.0
        if not np.isfinite(value) or value <= chance + margin:
            problems.append(f"{metric} {value:.3f} is not above chance {chance:.3f}")
    return problems, facts
