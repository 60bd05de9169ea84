"""Route any model to its Model Tree's expert — or to none.

A full model is compared with a few *anchors* of every tree of its architecture signature
(the root plus farthest-point-sampled members) on the shared recovery layers. Its score for a
tree is the distance to the nearest anchor in units of that tree's typical fine-tuning step
(the median parent→child distance), so one threshold serves trees of very different
spreads. The "unknown tree" threshold is calibrated on documented models: above every
in-tree score seen (with slack), below every cross-tree score seen.

A LoRA adapter carries only ΔW, which says nothing about distance to a base. It is routed to
the trees whose root has every layer it adapts (same names and shapes), and scored by how
well ΔW's top singular subspaces align with that root's W (≈ 1 for an unrelated W); the
"unknown" threshold for adapters is calibrated the same way on documented adapters.

State is saved as JSON (config, thresholds, per-tree metadata) plus one safetensors file
(anchor layers) — no pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from probex_core.files import atomic_write_bytes
from probex_core.trees import (
    TreeRecovery,
    WeightRecord,
    adapter_alignment,
    distances_to,
    layer_scales,
    pairwise_distances,
)


@dataclass(frozen=True)
class RouterConfig:
    """Knobs of the router."""

    max_anchors: int = 16  # anchors per tree: the root, then farthest-point-sampled members
    threshold_slack: float = 2.0  # τ = slack · the largest in-tree calibration score
    default_step: float = 0.05  # relative step for a tree with no edges (a lone root)
    adapter_floor: float = 1.2  # adapters: alignment at or below this is "unrelated" (≈ 1)


@dataclass(frozen=True)
class TreeReference:
    """What the router keeps about one tree."""

    tree_id: str  # recovered tree id
    signature: str  # architecture signature of the tree's full models
    kind: str  # "full" | "lora" | "mixed"
    anchor_ids: tuple[str, ...]  # repo ids of the anchors, root first
    anchors: dict[str, torch.Tensor]  # layer → (k, d_H, d_W) anchor weights
    scales: dict[str, float]  # layer → RMS norm of the signature group (distance unit)
    step: float  # median parent→child relative distance inside the tree
    adapter_signatures: tuple[str, ...] = ()  # signatures of the tree's LoRA adapters


@dataclass(frozen=True)
class RouteResult:
    """Where one model goes."""

    tree_id: str | None  # None: no tree (unknown architecture, or too far from every tree)
    distance: float  # best score (full: anchor distance / tree step; adapter: 1 / alignment)
    margin: float  # runner-up score minus best score (inf with one candidate)
    scores: dict[str, float] = field(default_factory=dict)  # tree_id → score, lower is closer
    reason: str | None = None  # why tree_id is None


def _farthest_points(d: np.ndarray, first: int, k: int) -> list[int]:
    """Greedy farthest-point sampling from `first`: anchors that cover the whole tree."""
    chosen = [first]
    gap = d[first].copy()
    while len(chosen) < min(k, d.shape[0]):
        nxt = int(np.argmax(gap))
        if gap[nxt] <= 0:
            break
        chosen.append(nxt)
        gap = np.minimum(gap, d[nxt])
    return chosen


def tree_references(
    recovery: TreeRecovery, records: Sequence[WeightRecord], config: RouterConfig | None = None
) -> dict[str, TreeReference]:
    """Build every tree's reference (anchors, distance unit, step) from a recovery."""
    config = config or RouterConfig()
    by_id = {r.repo_id: r for r in records}
    group_scales: dict[str, dict[str, float]] = {}
    for sig in {r.signature for r in records if not r.adapter}:
        recs = [r for r in records if r.signature == sig and not r.adapter]
        group_scales[sig] = layer_scales(recs, sorted(recs[0].layers))
    steps: dict[str, float] = {}
    out: dict[str, TreeReference] = {}
    for tid, info in recovery.trees.items():
        members = [by_id[m] for m in recovery.members(tid) if m in by_id]
        full = [r for r in members if not r.adapter]
        if info.root not in by_id or by_id[info.root].adapter or not full:
            continue  # no full model to measure from (e.g. adapters of an absent base)
        root = by_id[info.root]
        layers = sorted(root.layers)
        scales = group_scales[root.signature]
        d = pairwise_distances(full, layers, scales)
        pos = {r.repo_id: i for i, r in enumerate(full)}
        edge = [
            d[pos[r.repo_id], pos[recovery.models[r.repo_id].parent]]
            for r in full
            if recovery.models[r.repo_id].parent in pos
        ]
        if edge:
            steps[tid] = float(np.median(edge))
        idx = _farthest_points(d, pos[root.repo_id], config.max_anchors)
        out[tid] = TreeReference(
            tree_id=tid,
            signature=root.signature,
            kind=info.kind,
            anchor_ids=tuple(full[i].repo_id for i in idx),
            anchors={n: torch.stack([full[i].layers[n] for i in idx]).float() for n in layers},
            scales=scales,
            step=0.0,
            adapter_signatures=tuple(sorted({r.signature for r in members if r.adapter})),
        )
    fallback = float(np.median(list(steps.values()))) if steps else config.default_step
    return {tid: replace(ref, step=steps.get(tid, fallback)) for tid, ref in out.items()}


class Router:
    """Nearest-tree routing with a calibrated "unknown tree" answer."""

    def __init__(
        self,
        references: Mapping[str, TreeReference],
        threshold: float,
        adapter_threshold: float,
        config: RouterConfig | None = None,
    ) -> None:
        self.references = dict(references)
        self.threshold = threshold  # full models: best score above this → unknown tree
        self.adapter_threshold = adapter_threshold  # adapters: 1/alignment above this → unknown
        self.config = config or RouterConfig()

    @classmethod
    def fit(
        cls,
        references: Mapping[str, TreeReference],
        calibration: Sequence[tuple[WeightRecord, str]],
        config: RouterConfig | None = None,
    ) -> Router:
        """Calibrate the thresholds on (record, true tree id) pairs of documented models.

        An anchor's own distance is left out (leave-one-out), so a calibration model that is
        also an anchor is scored like an unseen one. τ = slack · max in-tree score, lowered to
        the geometric mean of max in-tree and min cross-tree score when they are separable.
        """
        config = config or RouterConfig()
        router = cls(references, math.inf, math.inf, config)
        inside, cross, a_inside = [], [], []
        for rec, true_tree in calibration:
            if true_tree not in router.references:
                continue
            scores = router._scores(rec, exclude=rec.repo_id)
            if true_tree in scores:
                (a_inside if rec.adapter else inside).append(scores[true_tree])
            if not rec.adapter:
                cross += [s for t, s in scores.items() if t != true_tree]
        router.threshold = _threshold(inside, cross, config.threshold_slack)
        ceiling = 1.0 / config.adapter_floor  # never accept an alignment at chance level
        a_tau = _threshold(a_inside, [], config.threshold_slack) if a_inside else ceiling
        router.adapter_threshold = min(a_tau, ceiling)
        return router

    def _scores(self, record: WeightRecord, exclude: str | None = None) -> dict[str, float]:
        if record.adapter:
            return self._adapter_scores(record)
        scores = {}
        for tid, ref in self.references.items():
            if ref.signature != record.signature:
                continue
            layers = [
                n
                for n in ref.anchors
                if n in record.layers
                and tuple(record.layers[n].shape) == tuple(ref.anchors[n].shape[1:])
            ]
            keep = [i for i, a in enumerate(ref.anchor_ids) if a != exclude]
            if not layers or not keep:
                continue
            anchors = {n: ref.anchors[n][keep].reshape(len(keep), -1) for n in layers}
            d = distances_to(record, anchors, layers, ref.scales)
            scores[tid] = float(d.min()) / max(ref.step, 1e-12)
        return scores

    def _adapter_scores(self, record: WeightRecord) -> dict[str, float]:
        scores = {}
        for tid, ref in self.references.items():
            want = {n: tuple(t.shape) for n, t in record.layers.items()}
            if not want or not all(
                n in ref.anchors and tuple(ref.anchors[n].shape[1:]) == s for n, s in want.items()
            ):
                continue
            align = np.mean(
                [
                    float(adapter_alignment(t, ref.anchors[n][:1])[0])
                    for n, t in record.layers.items()
                ]
            )
            scores[tid] = 1.0 / max(align, 1e-12)
        return scores

    def route(self, record: WeightRecord) -> RouteResult:
        """The tree of one model, or None with the reason."""
        scores = self._scores(record)
        if not scores:
            what = "adapted layer shapes" if record.adapter else "architecture signature"
            return RouteResult(None, math.inf, 0.0, {}, f"no tree with this {what}")
        ranked = sorted(scores.items(), key=lambda kv: kv[1])
        best_tree, best = ranked[0]
        margin = ranked[1][1] - best if len(ranked) > 1 else math.inf
        tau = self.adapter_threshold if record.adapter else self.threshold
        if best > tau:
            return RouteResult(
                None, best, margin, scores, f"score {best:.3g} above threshold {tau:.3g}"
            )
        return RouteResult(best_tree, best, margin, scores)

    def save(self, directory: str | Path) -> None:
        """router.json (config, thresholds, metadata) + router.safetensors (anchors)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": asdict(self.config),
            "threshold": self.threshold,
            "adapter_threshold": self.adapter_threshold,
            "trees": [
                {k: v for k, v in asdict(ref).items() if k != "anchors"}
                | {"layers": sorted(ref.anchors)}
                for ref in self.references.values()
            ],
        }
        tensors = {
            f"{ref.tree_id}::{n}": t.contiguous()
            for ref in self.references.values()
            for n, t in ref.anchors.items()
        }
        # each file atomic; router.json, written last, names the anchors it goes with, so a
        # save interrupted between the two is caught by `load`
        data = safetensors_save(tensors)
        meta["anchors_sha256"] = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(directory / "router.safetensors", data)
        atomic_write_bytes(directory / "router.json", json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, directory: str | Path) -> Router:
        """Inverse of `save`."""
        directory = Path(directory)
        meta = json.loads((directory / "router.json").read_text())
        data = (directory / "router.safetensors").read_bytes()
        want = meta.get("anchors_sha256")
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise ValueError(
                f"{directory}: router.safetensors is not the one router.json was written with "
                "(an interrupted save); materialise model_trees again"
            )
        tensors = safetensors_load(data)
        refs = {}
        for t in meta["trees"]:
            layers = t.pop("layers")
            refs[t["tree_id"]] = TreeReference(
                tree_id=t["tree_id"],
                signature=t["signature"],
                kind=t["kind"],
                anchor_ids=tuple(t["anchor_ids"]),
                anchors={n: tensors[f"{t['tree_id']}::{n}"] for n in layers},
                scales={k: float(v) for k, v in t["scales"].items()},
                step=float(t["step"]),
                adapter_signatures=tuple(t["adapter_signatures"]),
            )
        return cls(
            refs, meta["threshold"], meta["adapter_threshold"], RouterConfig(**meta["config"])
        )


def _threshold(inside: Sequence[float], cross: Sequence[float], slack: float) -> float:
    """Slack above the worst in-tree score, but never past the middle of the gap to the
    nearest cross-tree score (geometric mean), so documented foreign models stay out."""
    if not inside:
        return math.inf
    hi = max(inside) * slack
    lo_cross = [c for c in cross if c > max(inside)]
    if lo_cross:
        hi = min(hi, math.sqrt(max(inside) * min(lo_cross)))
    return float(hi)


__all__ = ["RouteResult", "Router", "RouterConfig", "TreeReference", "tree_references"]
