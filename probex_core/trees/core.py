"""What tree recovery works on and returns: weight records, settings, assignments, trees, and
the architecture signature and layer choices everything else groups by."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from probex_core.canon import find_layers

_HEAD_NAME = re.compile(
    r"(^|\.)(head|heads|classifier|lm_head|score|logits|fc_out|output_layer)(\.|$)|^fc$"
)


@dataclass(frozen=True)
class WeightRecord:
    """What tree recovery needs from one repo: its signature, its card hint, a few layers."""

    repo_id: str  # hub id "org/name"
    signature: str  # architecture_signature() of the repo's tensor names and shapes
    declared_base: str | None  # base_model from the card / adapter_config (a hint only)
    layers: dict[str, torch.Tensor]  # canonical 2-D layers, same names within a signature
    adapter: bool = False  # True for a LoRA adapter repo (layers hold ΔW = B @ A)


@dataclass(frozen=True)
class TreeConfig:
    """Knobs of `recover_trees`."""

    direction_lambda: float = 0.3  # λ of MoTHer's cost D + λ·scale·T (public code: 0.3)
    graded_cue: bool = True  # T grows with the kurtosis violation (capped at 1), not a 0/1 step
    sibling_cos: float = 0.1  # lift c from p to p's parent when cos∠(g, p, c) exceeds this
    penalty_scale: str = "edge"  # scale: "edge" = mean nearest-neighbour distance, "mean" = mean(D)
    # "raise" | "lower" | "auto": per tree, the majority of its declared edges, else the side of
    # the kurtosis distribution the root sits on
    kurtosis_direction: str = "auto"
    min_direction_votes: int = 3  # declared in-tree edges needed before they vote or choose
    # candidate numbers of shared drift directions removed before measuring edges
    drift_ranks: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 8)
    # declared edges may pick the root among this many most central models, and this many − 1
    # of either kurtosis extreme and of the bases cards name most (that name no base)
    root_candidates: int = 3
    min_gap_ratio: float = 2.5  # a merge-height jump at least this large separates trees
    min_split_distance: float = 0.5  # relative distance below which models are never split
    min_adapter_alignment: float = 1.5  # LoRA: alignment a base must reach to count as found


@dataclass(frozen=True)
class ModelAssignment:
    """One repo's place in the recovered forest."""

    repo_id: str  # hub id
    tree_id: str  # "tree-<12 hex of sha1(root repo id)>"
    parent: str | None  # recovered parent repo id; None for a root
    depth: int  # edges from the root
    is_root: bool  # True for the tree's root
    signature: str  # architecture signature of the repo


@dataclass(frozen=True)
class TreeInfo:
    """One recovered tree."""

    tree_id: str  # stable id derived from the root repo id
    root: str  # root repo id
    size: int  # number of models, root included
    signature: str  # the root's architecture signature
    kind: str  # "full" (full fine-tunes only), "lora" (root + adapters) or "mixed"
    direction: str  # kurtosis direction used inside this tree ("raise" | "lower")
    structure: dict = field(default_factory=dict)  # asdict(TreeStructure): how edges were found


@dataclass(frozen=True)
class Disagreement:
    """A declared base_model that the weights contradict."""

    repo_id: str  # the repo whose card declares a base
    declared_base: str  # what the card claims
    recovered_parent: str | None  # what the weights say
    declared_in_same_tree: bool  # the claimed base is at least in the recovered tree
    declared_known: bool  # the claimed base is a repo we have weights for


@dataclass
class TreeRecovery:
    """The recovered forest: per-repo assignments, per-tree summaries, card disagreements."""

    models: dict[str, ModelAssignment]
    trees: dict[str, TreeInfo]
    disagreements: list[Disagreement]
    directions: dict[str, str]  # tree id → kurtosis direction used
    seconds: float = 0.0  # wall time of the recovery

    def model_rows(self) -> list[dict]:
        """Rows for a `models`-style catalog table (one per repo)."""
        return [asdict(m) for m in self.models.values()]

    def tree_rows(self) -> list[dict]:
        """Rows for the `trees` catalog table."""
        return [asdict(t) for t in self.trees.values()]

    def disagreement_rows(self) -> list[dict]:
        """Rows for the card-disagreement table."""
        return [asdict(d) for d in self.disagreements]

    def members(self, tree_id: str) -> list[str]:
        """Repo ids of one tree, root first."""
        ms = [m for m in self.models.values() if m.tree_id == tree_id]
        return [m.repo_id for m in sorted(ms, key=lambda m: (m.depth, m.repo_id))]


def architecture_signature(tensor_shapes: Mapping[str, Sequence[int]]) -> str:
    """Hash of the sorted tensor names and shapes: models that can share a tree share it.

    A classification head keeps its name but not its shape: fine-tunes of one root get
    heads of different widths (their label sets differ) and still belong to one tree.
    Dtypes are left out too: a bf16 copy of a model is still the same tree.
    """
    items = sorted(
        (name, [] if is_head_layer(_module_of(name)) else [int(s) for s in shape])
        for name, shape in tensor_shapes.items()
    )
    return hashlib.sha1(json.dumps(items, separators=(",", ":")).encode()).hexdigest()[:16]


def _module_of(tensor_name: str) -> str:
    return (
        tensor_name.rsplit(".", 1)[0] if tensor_name.endswith((".weight", ".bias")) else tensor_name
    )


def tree_id_for(root_repo: str) -> str:
    """Stable tree id of a root: the same root gives the same id across runs and hubs."""
    return "tree-" + hashlib.sha1(root_repo.encode()).hexdigest()[:12]


def is_head_layer(name: str) -> bool:
    """Classification heads change shape with the label set, so they never define a tree."""
    return bool(_HEAD_NAME.search(name))


def choose_recovery_layers(
    tensor_shapes: Mapping[str, Sequence[int]], max_layers: int = 4
) -> list[str]:
    """Canonical layer names (canon.find_layers) to read for tree recovery and routing.

    Adapters: their LoRA layers (ΔW). Full models: hidden 2-D/conv layers, heads excluded,
    square-ish and large first — they carry most of the init-specific "nuisance" that tells
    trees apart, and their shapes do not depend on the task.
    """
    specs = find_layers(tensor_shapes)
    lora = [s for s in specs.values() if s.kind == "lora" and not is_head_layer(s.name)]
    if lora:
        pool = lora
    else:
        pool = [
            s
            for s in specs.values()
            if s.kind in ("linear", "conv") and not is_head_layer(s.name) and min(s.shape) >= 2
        ]

    def rank(s):  # square-ish first (aspect ≤ 4), then larger smaller side, then size, name
        aspect = max(s.shape) / min(s.shape)
        return (aspect > 4, -min(s.shape), -(s.shape[0] * s.shape[1]), s.name)

    return [s.name for s in sorted(pool, key=rank)[:max_layers]]
