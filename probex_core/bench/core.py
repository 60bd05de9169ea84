"""`probex bench core`: ProbeX vs the multi-view probe, Dense and StatNN on one synthetic layer.

Every model sees the same synthetic tree, layer, split, batch size and number of epochs; time
per epoch is the mean wall time of the training epochs (validation excluded) as measured by
`train_expert`. The issue's targets (768×768 layer, 100 classes): ProbeX ≥ 20× fewer
parameters and ≥ 5× faster per epoch than Dense at equal or better accuracy. Printed as
measured — on a shared 2-core CPU timings are noisy.

ProbeX is run at the paper's widths and with fewer probes (smaller r_U). Its first step, X·U,
costs d_H·d_W·r_U multiply-adds per model, Dense's whole forward d_H·d_W·d_Y: at r_U = 128 and
d_Y = 100 ProbeX does *more* arithmetic than Dense, so its speed-up can only come from the
smaller optimiser state. The sweep shows what fewer probes cost in accuracy and buy in time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from probex_core.metrics import per_class_accuracy
from probex_core.models import build_model, count_parameters
from probex_core.synthetic import SyntheticConfig, make_tree
from probex_core.train import TensorData, TrainConfig, predict_proba, train_expert


@dataclass(frozen=True)
class CoreBenchSize:
    d_H: int  # layer rows
    d_W: int  # layer columns
    n_classes: int  # d_Y; each model has half of them (chance = 0.5)
    n_models: int  # models in the tree (60 % train, 15 % val, 25 % test)
    epochs: int  # the same for every model
    r: int  # r_V, and r_U of the paper-width rows
    r_T: int  # ProbeX representation width (paper default 512)
    fewer_probes: tuple[int, ...]  # smaller r_U values, each at r_V = r_T = r


FULL = CoreBenchSize(768, 768, 100, 640, 20, 128, 512, (32, 16, 8))
QUICK = CoreBenchSize(32, 48, 10, 200, 40, 8, 32, (4, 2))


def _models(s: CoreBenchSize) -> dict[str, tuple[str, dict]]:
    mv_r = max(4, s.r // 4)
    models = {
        f"probex (r_U=r_V={s.r}, r_T={s.r_T})": ("probex", {"r_U": s.r, "r_V": s.r, "r_T": s.r_T}),
        f"probex (r_U=r_V=r_T={s.r})": ("probex", {"r_U": s.r, "r_V": s.r, "r_T": s.r}),
    }
    for r_U in s.fewer_probes:
        models[f"probex (r_U={r_U}, r_V=r_T={s.r})"] = (
            "probex",
            {"r_U": r_U, "r_V": s.r, "r_T": s.r},
        )
    return models | {
        f"mvprobe (r={mv_r}, proj=32, r_T={s.r})": (
            "mvprobe",
            {"r": mv_r, "proj_dim": 32, "r_T": s.r},
        ),
        "dense": ("dense", {}),
        "statnn": ("statnn", {}),
    }


def run(quick: bool = False) -> dict:
    s = QUICK if quick else FULL
    t0 = time.perf_counter()
    tree = make_tree(
        SyntheticConfig(
            d_H=s.d_H,
            d_W=s.d_W,
            n_classes=s.n_classes,
            n_models=s.n_models,
            classes_per_model=s.n_classes // 2,
            text_dim=16,
        ),
        seed=0,
    )
    idx = tree.split((0.6, 0.15), seed=0)
    data = {k: TensorData(tree.X[v], tree.Y[v]) for k, v in idx.items()}
    del tree
    print(
        f"layer {s.d_H}×{s.d_W}, {s.n_classes} classes, {len(data['train'])} train / "
        f"{len(data['val'])} val / {len(data['test'])} test models, {s.epochs} epochs, "
        f"batch 128, {torch.get_num_threads()} threads (data {time.perf_counter() - t0:.1f} s)"
    )
    cfg = TrainConfig(epochs=s.epochs, val_every=max(1, s.epochs // 3), batch_size=128)
    rows: dict[str, dict] = {}
    print(f"{'model':42s} {'params':>12s} {'s/epoch':>9s} {'val acc':>8s} {'test acc':>9s}")
    for name, (kind, hp) in _models(s).items():
        model = build_model(kind, s.d_H, s.d_W, s.n_classes, seed=0, **hp)
        res = train_expert(model, data["train"], data["val"], cfg)
        test = per_class_accuracy(
            data["test"].Y.numpy(), predict_proba(res.model, data["test"]).numpy()
        )
        rows[name] = {
            "params": count_parameters(model),
            "epoch_seconds": res.epoch_seconds,
            "val_accuracy": res.best_metric,
            "test_accuracy": test,
        }
        r = rows[name]
        print(
            f"{name:42s} {r['params']:12,d} {r['epoch_seconds']:9.3f} "
            f"{r['val_accuracy']:8.3f} {r['test_accuracy']:9.3f}",
            flush=True,
        )
    dense = rows["dense"]
    ratios = {}
    for name in [n for n in rows if n.startswith("probex")]:
        p = rows[name]
        ratios[name] = {
            "param_ratio": dense["params"] / p["params"],
            "speedup_per_epoch": dense["epoch_seconds"] / p["epoch_seconds"],
            "accuracy_delta": p["test_accuracy"] - dense["test_accuracy"],
        }
        q = ratios[name]
        q["meets_targets"] = bool(
            q["param_ratio"] >= 20 and q["speedup_per_epoch"] >= 5 and q["accuracy_delta"] >= 0
        )
        print(
            f"Dense/{name}: {q['param_ratio']:.1f}× params (target ≥ 20), "
            f"{q['speedup_per_epoch']:.2f}× time per epoch (target ≥ 5), "
            f"test accuracy {q['accuracy_delta']:+.3f} vs Dense (target ≥ 0)"
            f"{'  — all targets met' if q['meets_targets'] else ''}"
        )
    met = [n for n, q in ratios.items() if q["meets_targets"]]
    print(f"ProbeX configurations meeting every target: {', '.join(met) or 'none'}")
    return {
        "size": s.__dict__,
        "models": rows,
        "ratios": ratios,
        "meeting_targets": met,
        "seconds": time.perf_counter() - t0,
    }
