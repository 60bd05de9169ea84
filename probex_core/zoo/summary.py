"""What a zoo generation produced and how long it took (summary.json), and its printed table."""

from __future__ import annotations

from probex_core.zoo.presets import ZooPreset


def summarise(
    cfg: ZooPreset, seed: int, plans: dict, roots: dict, times: dict, seconds: float
) -> dict:
    trees = []
    for t in cfg.trees:
        ps = plans[t.tree_id]
        acc = [p.accuracy for p in ps]
        trees.append({
            "tree_id": t.tree_id,
            "kind": t.kind,
            "architecture": t.arch.model_type,
            "models": len(ps) + 1,
            "splits": {s: sum(p.split == s for p in ps) for s in t.splits.as_dict()},
            "undocumented": sum(not p.documented for p in ps),
            "root_accuracy": round(roots[t.tree_id].accuracy, 4),
            "finetune_accuracy_mean": round(sum(acc) / len(acc), 4),
            "finetune_accuracy_min": round(min(acc), 4),
            "chance": round(sum(p.chance for p in ps) / len(ps), 4),
            "seconds": round(times[t.tree_id], 1),
        })  # fmt: skip
    return {
        "preset": cfg.name,
        "seed": seed,
        "trees": trees,
        "n_trees": len(trees),
        "n_models": sum(t["models"] for t in trees),
        "n_undocumented": sum(t["undocumented"] for t in trees),
        "seconds": round(seconds, 1),
    }


def format_summary(s: dict) -> str:
    """The table printed at the end of `probex zoo generate`."""
    lines = [
        f"zoo {s['preset']!r} seed {s['seed']}: {s['n_trees']} trees, {s['n_models']} models "
        f"({s['n_undocumented']} undocumented) in {s['seconds']:.0f} s"
        + (
            f", trees side by side in {s['processes']} processes"
            if s.get("processes", 1) > 1
            else ""
        ),
        f"{'tree':<8} {'kind':<5} {'arch':<8} {'models':>6} {'root acc':>8} {'ft mean':>8} {'ft min':>7} {'chance':>7} {'time s':>7}",
    ]
    for t in s["trees"]:
        lines.append(
            f"{t['tree_id']:<8} {t['kind']:<5} {t['architecture']:<8} {t['models']:>6} {t['root_accuracy']:>8.3f} "
            f"{t['finetune_accuracy_mean']:>8.3f} {t['finetune_accuracy_min']:>7.3f} {t['chance']:>7.3f} {t['seconds']:>7.1f}"
        )
    return "\n".join(lines)
