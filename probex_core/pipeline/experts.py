"""Step 4 (per tree): layer sweep, ProbeX experts (classification, zero-shot), baselines."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from probex_core.catalog import Home, read_table, write_table
from probex_core.digest import digest
from probex_core.files import atomic_write_json
from probex_core.metrics import per_class_accuracy, topk_accuracy
from probex_core.models import build_model, count_parameters
from probex_core.pipeline.common import (
    CODE_VERSIONS,
    ExpertSettings,
    Progress,
    StepReport,
    png,
)
from probex_core.pipeline.layers import load_layer_index
from probex_core.schemas import frame
from probex_core.text import CachedTextEncoder, EmbeddingCache, class_prompts, get_text_encoder
from probex_core.train import (
    RidgeResult,
    TensorData,
    TrainConfig,
    TrainResult,
    fit_ridge,
    fit_temperature,
    load_expert,
    open_layer_stack,
    predict_logits,
    predict_proba,
    save_expert,
    train_expert,
    warm_start_probex,
)

BASELINES = ("statnn", "dense")


def text_encoder(home: Home, spec: str):
    """The configured encoder behind an on-disk cache: a text is encoded once per encoder."""
    return CachedTextEncoder(_loaded_encoder(spec), EmbeddingCache(home.artifacts / "text_cache"))


@functools.lru_cache(maxsize=4)
def _loaded_encoder(spec: str):
    """One loaded encoder per spec and process: predict and evaluate ask once per tree, and
    loading MiniLM takes seconds."""
    return get_text_encoder(spec)


def split_documented(
    repo_ids: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """A stable train/val split of the documented members: by a hash of (seed, repo id)."""
    keyed = sorted(range(len(repo_ids)), key=lambda i: digest(seed, repo_ids[i]))
    n_val = max(1, round(val_fraction * len(repo_ids)))
    return sorted(keyed[n_val:]), sorted(keyed[:n_val])


def split_members(
    home: Home, repo_ids: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int], str]:
    """Train/val positions of the documented members `repo_ids`, and where the split came
    from.

    A hub that declares splits (Model-J; the crawl's `split` column) is followed: "val"
    models validate, the rest train ("hub"). Without a declared "val" split, a stable hash of
    (seed, repo id) holds out `val_fraction` ("hash"). Evaluation splits never get here:
    their labels are withheld at the crawl (`RepoRecord.withheld_classes`).
    """
    split = read_table(home, "repos").set_index("repo_id").split
    declared = [split.get(r) for r in repo_ids]
    val = [i for i, s in enumerate(declared) if s == "val"]
    if val and len(val) < len(repo_ids):
        return [i for i, s in enumerate(declared) if s != "val"], val, "hub"
    tr, va = split_documented(repo_ids, val_fraction, seed)
    return tr, va, "hash"


def tree_labels(home: Home, repo_ids: list[str]) -> tuple[list[str], list[int], torch.Tensor]:
    """Class list of the tree, the member rows that are documented (roots excluded), and Y."""
    repos = read_table(home, "repos").set_index("repo_id")
    members = read_table(home, "tree_members").set_index("repo_id")
    labelled = []
    for i, rid in enumerate(repo_ids):
        classes = repos.at[rid, "training_classes"]
        if is_list(classes) and len(classes) and not bool(members.at[rid, "is_root"]):
            labelled.append((i, list(classes)))
    classes = sorted({c for _, cs in labelled for c in cs})
    col = {c: j for j, c in enumerate(classes)}
    Y = torch.zeros(len(labelled), len(classes))
    for row, (_, cs) in enumerate(labelled):
        Y[row, [col[c] for c in cs]] = 1.0
    return classes, [i for i, _ in labelled], Y


def is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def majority_chance(Y_train: torch.Tensor, Y_val: torch.Tensor) -> float:
    """Per-class accuracy of always answering each class's majority label from training."""
    guess = (Y_train.mean(0) > 0.5).float().expand_as(Y_val)
    return per_class_accuracy(Y_val.numpy(), guess.numpy())


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


def train_experts(
    home: Home, tree_id: str, settings: ExpertSettings, progress: Progress | None = None
) -> StepReport:
    index = load_layer_index(home, tree_id)
    repo_ids = index["repo_ids"]
    classes, rows, Y = tree_labels(home, repo_ids)
    if len(rows) < settings.min_documented or not classes:
        return skip_tree(home, tree_id, index, len(rows), settings)
    tr, va, split_from = split_members(
        home, [repo_ids[i] for i in rows], settings.val_fraction, settings.seed
    )
    ldir = home.layer_dir(tree_id)

    def data(layer: str, idx: list[int]) -> TensorData:
        with open_layer_stack(ldir / f"{layer}.safetensors") as stack:
            return TensorData(stack.read([rows[i] for i in idx]), Y[idx])

    hp = {"r_U": settings.r_U, "r_V": settings.r_V, "r_T": settings.r_T}
    single_label = bool((Y.sum(1) == 1).all())
    objective = "single" if single_label else "classify"
    t0 = time.perf_counter()
    splits = {n: (data(n, tr), data(n, va)) for n in index["layers"]}
    say = progress or (lambda line: None)
    say(
        f"experts: {len(rows)} documented models ({len(tr)} train, {len(va)} val), "
        f"{len(classes)} classes; sweeping {len(splits)} layers ({settings.sweep_epochs} epochs)"
    )
    sweep_cfg = settings.train_config(objective, sweep=True)
    swept = {
        n: warm_probex(a, b, len(classes), sweep_cfg, settings, single_label)
        for n, (a, b) in splits.items()
    }
    curve = {n: r.best_metric for n, (_, r) in swept.items()}
    layer = max(curve, key=curve.__getitem__)
    train_d, val_d = splits[layer]
    d_H, d_W = train_d.shape
    chance = majority_chance(train_d.Y, val_d.Y)
    cfg = settings.train_config(objective)
    out = home.expert_dir(tree_id)
    out.mkdir(parents=True, exist_ok=True)
    version = index["version"]
    meta = {
        "tree_id": tree_id,
        "layer": layer,
        "classes": classes,
        "version": version,
        "code_version": CODE_VERSIONS["tree_experts"],
        "encoder": settings.encoder,
        "settings": asdict(settings),
    }

    results, checkpoints, calibration = [], {}, {}

    def record(
        method: str, objective: str, metric: str, value: float, chance_: float, ckpt: str
    ) -> None:
        results.append(
            {
                "tree_id": tree_id,
                "method": method,
                "objective": objective,
                "layer": layer,
                "metric": metric,
                "value": float(value),
                "chance": float(chance_),
                "n_train": len(tr),
                "n_val": len(va),
                "encoder": settings.encoder,
                "checkpoint": ckpt,
                "code_version": CODE_VERSIONS["tree_experts"],
            }
        )

    say(f"experts: layer {layer} chosen; training ProbeX and baselines ({settings.epochs} epochs)")
    ridge, probex = warm_probex(
        train_d, val_d, len(classes), cfg, settings, single_label, ridge=swept[layer][0]
    )
    trained = {"probex": probex}
    # the paper's ProbeX, from random probes, beside the warm-started one
    models = {
        "probex-scratch": build_model("probex", d_H, d_W, len(classes), seed=settings.seed, **hp)
    }
    for kind in BASELINES:
        if kind == "dense" and d_H * d_W * len(classes) > settings.dense_max_params:
            continue  # reported below as skipped
        models[kind] = build_model(kind, d_H, d_W, len(classes), seed=settings.seed)
    history = []
    for method in ("probex", *models):
        res = trained.get(method) or train_expert(models[method], train_d, val_d, cfg)
        path = out / f"{method}.safetensors"
        save_expert(
            path, res.model, {**meta, "method": method, "params": count_parameters(res.model)}
        )
        checkpoints[method] = path.name
        calibration[method] = calibrate(res.model, val_d, single_label)
        probs = predict_proba(res.model, val_d).numpy()
        record(
            method,
            "classify",
            "val_per_class_accuracy",
            per_class_accuracy(val_d.Y.numpy(), probs),
            chance,
            path.name,
        )
        if single_label:
            record(
                method,
                "classify",
                "val_top1",
                topk_accuracy(probs, val_d.Y.numpy(), 1),
                1 / len(classes),
                path.name,
            )
        if method == "probex":
            history = res.history
    # the closed-form ridge read-out: the warm start, and a cheap linear bar beside the experts
    path = out / "ridge.safetensors"
    save_expert(path, ridge.model, {**meta, "method": "ridge", "ridge_lambda": ridge.ridge})
    checkpoints["ridge"] = path.name
    calibration["ridge"] = calibrate(ridge.model, val_d, single_label)
    probs = predict_proba(ridge.model, val_d).numpy()
    record("ridge", "classify", "val_per_class_accuracy",
           per_class_accuracy(val_d.Y.numpy(), probs), chance, path.name)  # fmt: skip
    if single_label:
        record("ridge", "classify", "val_top1", ridge.best_metric, 1 / len(classes), path.name)

    say("experts: training the zero-shot expert (text space)")
    encoder = text_encoder(home, settings.encoder)
    texts = encoder.encode(class_prompts(classes))
    present = val_d.Y[:, val_d.Y.sum(0) > 0]
    if single_label:  # top-1 among the candidates; a random guess is right this often
        zs_metric, zs_chance = (
            "val_zero_shot_top1",
            float((present.sum(1) / present.shape[1]).mean()),
        )
    else:
        zs_metric, zs_chance = "val_zero_shot_ranking_auc", 0.5
    # one class per model: the paper's softmax head; many: the multi-label (BCE) head beside
    # it, and the better on validation becomes the tree's zero-shot expert
    losses = ("softmax",) if single_label else ("softmax", "bce")
    zs_runs = {}
    for loss in losses:
        zs = build_model(
            "probex", d_H, d_W, 0, text_dim=texts.shape[1], seed=settings.seed,
            zs_direction="weight_to_text", **hp,
        )  # fmt: skip
        # the classifier's encoder: its representation already holds the classes linearly
        zs.load_state_dict(encoder_state(probex.model), strict=False)
        zs_cfg = replace(settings.train_config("zeroshot"), zs_loss=loss)
        zs_runs[loss] = train_expert(
            zs, train_d, val_d, zs_cfg, text_embeddings=texts, class_names=classes
        )
        path = out / f"zeroshot-{loss}.safetensors"
        save_expert(
            path,
            zs_runs[loss].model,
            {**meta, "method": f"probex-zeroshot-{loss}", "encoder_name": encoder.name},
        )
        checkpoints[f"zeroshot-{loss}"] = path.name
        record(f"probex-zeroshot-{loss}", "zeroshot", zs_metric, zs_runs[loss].best_metric,
               zs_chance, path.name)  # fmt: skip
    chosen = max(losses, key=lambda k: zs_runs[k].best_metric)
    checkpoints["zeroshot"] = checkpoints[f"zeroshot-{chosen}"]
    record("probex", "zeroshot", zs_metric, zs_runs[chosen].best_metric, zs_chance,
           checkpoints["zeroshot"])  # fmt: skip

    meta.update(
        {
            "checkpoints": checkpoints,
            "calibration": calibration,
            "sweep": curve,
            "seconds": time.perf_counter() - t0,
            "split_from": split_from,
            "train_repos": [repo_ids[rows[i]] for i in tr],
            "val_repos": [repo_ids[rows[i]] for i in va],
            "single_label": single_label,
            "zero_shot_loss": chosen,
        }
    )
    atomic_write_json(out / "meta.json", meta)
    write_status(home, tree_id, "trained", None, layer)
    res_df = frame(results, "expert_results")
    write_table(home, "expert_results", res_df, part=tree_id)
    write_table(
        home,
        "layer_sweep",
        frame(
            [
                {"tree_id": tree_id, "layer": n, "method": "probex", "val_metric": v}
                for n, v in curve.items()
            ],
            "layer_sweep",
        ),
        part=tree_id,
    )
    skipped = (
        []
        if "dense" in models
        else [f"dense skipped: {d_H}x{d_W}x{len(classes)} > {settings.dense_max_params} params"]
    )
    return StepReport(
        summary={
            "tree_id": tree_id,
            "layer": layer,
            "classes": len(classes),
            "n_train": len(tr),
            "n_val": len(va),
            "seconds": round(meta["seconds"], 1),
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
        data_version=digest(version, res_df.value.round(6).tolist()),
    )


def warm_probex(
    train: TensorData,
    val: TensorData,
    n_classes: int,
    cfg: TrainConfig,
    settings: ExpertSettings,
    single_label: bool,
    ridge: RidgeResult | None = None,
) -> tuple[RidgeResult, TrainResult]:
    """The ridge read-out of one layer (fitted unless given, e.g. by the layer sweep), and the
    ProbeX expert warm-started from it and trained (`warm_start_probex`; random probes with
    `settings.probex_init == "random"`)."""
    ridge = ridge or fit_ridge(train, val, single=single_label)
    d_H, d_W = train.shape
    hp = {"r_U": settings.r_U, "r_V": settings.r_V, "r_T": settings.r_T}
    model = build_model("probex", d_H, d_W, n_classes, seed=settings.seed, **hp)
    if settings.probex_init == "ridge":
        warm_start_probex(model, ridge.model, train)
    return ridge, train_expert(model, train, val, cfg)


def encoder_state(model) -> dict[str, torch.Tensor]:
    """A ProbeX's encoder weights (probes, projections, training mean), without its heads."""
    return {
        k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "zero_shot."))
    }


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
    out = home.expert_dir(tree_id)
    out.mkdir(parents=True, exist_ok=True)
    reason = f"{n_documented} documented models < {settings.min_documented} needed for an expert"
    for name in out.glob("*.safetensors"):
        name.unlink()
    atomic_write_json(
        out / "meta.json",
        {
            "tree_id": tree_id,
            "version": index["version"],
            "skipped": reason,
            "checkpoints": {},
            "code_version": CODE_VERSIONS["tree_experts"],
        },
    )
    write_table(home, "expert_results", frame([], "expert_results"), part=tree_id)
    write_table(home, "layer_sweep", frame([], "layer_sweep"), part=tree_id)
    write_status(home, tree_id, "skipped", reason, None)
    return StepReport(
        summary={"tree_id": tree_id, "skipped": reason}, data_version=index["version"]
    )


def load_meta(home: Home, tree_id: str) -> dict:
    path = home.expert_dir(tree_id) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"tree {tree_id}: no experts at {path} (materialise tree_experts)")
    return json.loads(path.read_text())


def verify_experts(home: Home, tree_id: str) -> tuple[list[str], dict]:
    """The blocking gate: finite weights, and ProbeX above chance on validation."""
    meta = load_meta(home, tree_id)
    if meta.get("skipped"):
        return [], {"skipped": meta["skipped"]}
    problems = []
    for method, name in meta["checkpoints"].items():
        model, _ = load_expert(home.expert_dir(tree_id) / name)
        bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
        if bad:
            problems.append(f"{method}: non-finite weights in {bad[:3]}")
    res = read_table(home, "expert_results")
    res = res[(res.tree_id == tree_id) & (res.method == "probex")]
    facts = {}
    # one class per model (LoRA-style trees): per-class accuracy is ~1 for any all-negative
    # guess, so the gate reads top-1 instead
    gated = ("val_top1",) if meta.get("single_label") else ("val_per_class_accuracy",)
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
