"""Step 3 (per tree): read the candidate layers of every member, canonicalised to 2-D."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch

from probex_core.canon import assemble_layer, find_layers
from probex_core.catalog import Home, read_table
from probex_core.digest import digest
from probex_core.hub import HubSource, Rejected, RepoError, RepoRecord, require_finite
from probex_core.pipeline.common import (
    CODE_VERSIONS,
    ExpertSettings,
    Progress,
    StepReport,
    Ticker,
)
from probex_core.pipeline.crawl import layers_part, load_records, write_rejected
from probex_core.store import TreeLayers, write_layer_stack
from probex_core.trees import is_head_layer


def tree_members(home: Home, tree_id: str) -> list[str]:
    members = read_table(home, "tree_members")
    ids = sorted(members.loc[members.tree_id == tree_id, "repo_id"].tolist())
    if not ids:
        raise KeyError(f"tree {tree_id!r} has no members in the catalog (materialise model_trees)")
    return ids


def tree_version(home: Home, tree_id: str) -> str:
    """What a tree's layers and experts are built from: its members' fingerprints + code."""
    summary = read_table(home, "tree_summary")
    row = summary[summary.tree_id == tree_id]
    if row.empty:
        raise KeyError(f"unknown tree {tree_id!r}")
    return digest(
        row.fingerprint.iloc[0], CODE_VERSIONS["tree_layers"], CODE_VERSIONS["tree_experts"]
    )


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


SCREEN_TRAIN, SCREEN_VAL = 96, 48  # labelled models a layer screen reads (train, val)
SCREEN_MIN = 24  # fewer labelled models: no screen, layers spread evenly over depth
MAX_SCREENED = 64  # layers a screen reads at most (evenly spread beyond that)


def candidate_layers(
    shapes_by_repo: dict[str, dict], max_layers: int
) -> dict[str, tuple[int, int]]:
    """Layers every member has with one shape (heads excluded), evenly spread over depth."""
    common = None
    for shapes in shapes_by_repo.values():
        specs = {
            n: s.shape
            for n, s in find_layers(shapes).items()
            if not is_head_layer(n) and min(s.shape) >= 2
        }
        common = specs if common is None else {n: s for n, s in common.items() if specs.get(n) == s}
    names = _even(sorted(common or {}, key=_natural), max_layers)
    return {n: common[n] for n in names}


def _even(names: list[str], k: int) -> list[str]:
    if len(names) <= k:
        return names
    step = (len(names) - 1) / (k - 1) if k > 1 else 0
    return [names[round(i * step)] for i in range(k)]


def screen_layers(
    home: Home,
    source: HubSource,
    recs: list,
    layers: dict[str, tuple[int, int]],
    reference_id: str | None,
) -> dict[str, float]:
    """Validation score of a closed-form ridge read-out of every candidate layer, from a
    labelled subsample (≤ SCREEN_TRAIN train and SCREEN_VAL val models, the hub's declared
    splits when it has them): cheap enough to cover every projection of a ViT-B, so the
    layers the experts then sweep in full are the promising ones, wherever they sit.
    {} when the tree has fewer than SCREEN_MIN labelled models."""
    from probex_core.pipeline.labels import split_members, tree_labels
    from probex_core.ridge import fit_ridge

    repo_ids = [r.repo_id for r in recs]
    classes, rows, Y = tree_labels(home, repo_ids)
    if len(rows) < SCREEN_MIN or not classes:
        return {}
    defaults = ExpertSettings()
    tr, va, _ = split_members(
        home, [repo_ids[i] for i in rows], defaults.val_fraction, defaults.seed
    )
    tr, va = _even(tr, SCREEN_TRAIN), _even(va, SCREEN_VAL)
    ref_rec = next((r for r in recs if r.repo_id == reference_id), None)
    read = ([ref_rec] if ref_rec else []) + [recs[rows[i]] for i in tr + va]
    specs = [find_layers(r.tensor_shapes()) for r in read]  # once per model, not per layer
    single = bool((Y.sum(1) == 1).all())
    scores = {}
    for name in layers:
        mats = [
            assemble_layer(s[name], source.read_tensors(r, s[name].tensors))
            for r, s in zip(read, specs, strict=True)
        ]
        X = torch.stack(mats)
        ref = X[0] if ref_rec else None
        X = layer_transform(X[1:] if ref_rec else X, ref)
        ok = torch.isfinite(X.flatten(1)).all(1)  # a NaN model is rejected later, not scored
        Xtr, Ytr, Xva, Yva = X[: len(tr)], Y[tr], X[len(tr) :], Y[va]
        ok_tr, ok_va = ok[: len(tr)], ok[len(tr) :]
        if not (ok_tr.any() and ok_va.any()):
            scores[name] = float("-inf")
            continue
        fit = fit_ridge((Xtr[ok_tr], Ytr[ok_tr]), (Xva[ok_va], Yva[ok_va]), single=single)
        scores[name] = float(fit.best_metric)
    return scores


def layer_transform(X: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """What experts read: each model's change from its reference, scaled to unit RMS.

    Inside a tree the ancestors are shared nuisance, and the size of a fine-tune's change
    mostly follows its learning rate and steps; the direction of the change is what carries
    the task. `reference` is one matrix (d_H, d_W) for all, one per model (N, d_H, d_W), or
    None for LoRA layers, which are already changes and are only rescaled. A model equal to
    its reference stays zero.
    """
    D = X if reference is None else X - reference
    rms = D.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
    return D / rms.view(-1, *([1] * (D.dim() - 1)))


def nearest_reference(X: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """For models X (N, d_H, d_W) not in the catalog, the reference each would have had: the
    nearest of a tree's references (its root and every recovered parent) — a fine-tune
    lies closest to the model it was tuned from (MoTHer's premise) -> (N, d_H, d_W)."""
    dist = torch.cdist(X.flatten(1), references.flatten(1))  # (N, R)
    return references[dist.argmin(1)]


def member_references(
    repo_ids: list[str], parents: dict[str, str | None], root_id: str | None
) -> tuple[list[str], list[int]]:
    """(reference repo ids — the root first, then every member that is another's recovered
    parent — and, per member, the position of its reference in that list).

    Measuring each model from its recovered parent rather than the root leaves only its own
    fine-tune in the layer: in a multi-level tree a grandchild's change from the root also
    holds its parent's training (default zoo mlp-b, ridge read-out of fc2: 0.705 from the
    root, 0.826 from the true parent). The root is its own reference (a zero change)."""
    members = set(repo_ids)
    refs = [root_id] + sorted(
        {p for r, p in parents.items() if p in members and p != root_id and r in members}
    )
    pos = {r: j for j, r in enumerate(refs)}
    return refs, [pos.get(parents.get(r), 0) if r != root_id else 0 for r in repo_ids]


def extract_layers(
    home: Home,
    source: HubSource,
    tree_id: str,
    max_layers: int = 6,
    progress: Progress | None = None,
) -> StepReport:
    """Choose a tree's candidate layers, read them from every member (dropping, with its
    reason, a member whose layers cannot be read or are not finite), and write one stack per
    layer, measured from each member's recovered parent, with the tree's `layers.json`."""
    records = load_records(home)
    recs = [records[i] for i in tree_members(home, tree_id)]
    root_id, parents = _recovered_parents(home, tree_id)
    # A LoRA tree's root is the full base model; its members' layers are the adapters' ΔW.
    lora = any(r.kind == "lora" for r in recs)
    if lora:
        recs = [r for r in recs if r.kind == "lora"]
    layers, screen = _choose_layers(home, source, tree_id, recs, None if lora else root_id,
                                    max_layers, progress)  # fmt: skip
    kept, stacks, rejected = _read_members(source, recs, layers, progress)
    write_rejected(home, layers_part(tree_id), "layers", rejected)
    if not kept:
        raise ValueError(f"tree {tree_id}: every member was rejected ({rejected[0].reason})")
    repo_ids = [r.repo_id for r in kept]
    relative = not lora and root_id in repo_ids
    ref_ids = _write_stacks(TreeLayers(home, tree_id), repo_ids, stacks, parents,
                            root_id if relative else None)  # fmt: skip
    version = tree_version(home, tree_id)
    TreeLayers(home, tree_id).write_index(
        {
            "tree_id": tree_id,
            "repo_ids": repo_ids,
            "version": version,
            "layers": {n: list(s) for n, s in layers.items()},
            "reference": root_id if relative else None,
            "references": ref_ids,
            "transform": "delta_from_parent_unit_rms" if relative else "unit_rms",
            "screen": screen,
        },
    )
    return StepReport(
        summary={
            "tree_id": tree_id,
            "models": len(repo_ids),
            "layers": len(layers),
            "references": len(ref_ids),
            "screened": len(screen),
            "rejected": len(rejected),
            "layer_shapes": json.dumps({n: list(s) for n, s in layers.items()}),
        },
        data_version=version,
    )


def _recovered_parents(home: Home, tree_id: str) -> tuple[str | None, dict[str, str | None]]:
    """The tree's recovered root and each member's recovered parent."""
    members = read_table(home, "tree_members")
    mine = members[members.tree_id == tree_id]
    root = mine.loc[mine.is_root.astype(bool), "repo_id"]
    parents = {
        r.repo_id: (r.parent if isinstance(r.parent, str) else None) for r in mine.itertuples()
    }
    return (root.iloc[0] if len(root) else None), parents


def _read_members(
    source: HubSource,
    recs: list[RepoRecord],
    layers: Mapping[str, Any],
    progress: Progress | None,
) -> tuple[list[RepoRecord], dict[str, list[torch.Tensor]], list[Rejected]]:
    """Every member's chosen layers, stacked per layer; a member that cannot be read (or
    whose layers are not finite) is rejected with its reason instead."""
    stacks: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    kept, rejected = [], []
    tick = Ticker(progress)
    for i, r in enumerate(recs):
        tick(f"layers: read {i:,}/{len(recs):,} models")
        try:
            mats = member_layers(source, r, layers)
        except RepoError as e:
            rejected.append(Rejected(e.repo_id, e.path, e.reason))
            continue
        kept.append(r)
        for n in layers:
            stacks[n].append(mats[n])
    return kept, stacks, rejected


def _choose_layers(home, source, tree_id, recs, root_id, max_layers, progress):
    """The layers to extract: every 2-D layer the members share, cut to `max_layers` by the
    ridge screen on labelled models when there are more (kept in depth order), else spread
    evenly over depth. Returns ({layer: shape}, the screen's scores)."""
    layers = candidate_layers({r.repo_id: r.tensor_shapes() for r in recs}, MAX_SCREENED)
    if not layers:
        raise ValueError(f"tree {tree_id}: its members share no 2-D layer")
    if len(layers) <= max_layers:
        return {n: layers[n] for n in _even(list(layers), max_layers)}, {}
    if progress is not None:
        progress(f"layers: screening {len(layers)} candidate layers on labelled models")
    screen = screen_layers(home, source, recs, layers, root_id)
    if not screen:
        return {n: layers[n] for n in _even(list(layers), max_layers)}, {}
    best = set(sorted(screen, key=screen.__getitem__, reverse=True)[:max_layers])
    return {n: s for n, s in layers.items() if n in best}, screen


def _write_stacks(store: TreeLayers, repo_ids, stacks, parents, root_id) -> list[str]:
    """One stack per layer; with a root, each member measured from its recovered parent and
    the references written beside it. Returns the reference repo ids (root first)."""
    store.dir.mkdir(parents=True, exist_ok=True)
    ref_ids, ref_of = member_references(repo_ids, parents, root_id) if root_id else ([], [])
    for n, mats in stacks.items():
        X = torch.stack(mats)
        reference = None
        if root_id:
            R = X[[repo_ids.index(r) for r in ref_ids]]
            write_layer_stack(store.reference_path(n), ref_ids, R)
            reference = R[ref_of]
        write_layer_stack(store.stack_path(n), repo_ids, layer_transform(X, reference))
    return ref_ids


def member_layers(
    source: HubSource, record: RepoRecord, layers: dict[str, tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """One member's chosen layers, each checked to be finite (`candidate_layers` already
    chose only layers every member has, with one shape). A RepoError names the file and the
    reason otherwise (unreadable, NaN or Inf), and only this member is dropped."""
    specs = find_layers(record.tensor_shapes())
    names = sorted({t for n in layers for t in specs[n].tensors})
    tensors = source.read_tensors(record, names)
    return {n: require_finite(record, n, assemble_layer(specs[n], tensors)) for n in layers}


def verify_layers(home: Home, tree_id: str) -> list[str]:
    """Problems with a tree's layer files: missing members, wrong shapes, NaN/Inf."""
    store = TreeLayers(home, tree_id)
    index = store.index()
    problems = []
    for n, shape in index["layers"].items():
        with store.open(n) as stack:
            if list(stack.repo_ids) != index["repo_ids"]:
                problems.append(f"{n}: members differ from layers.json")
            if list(stack.shape[1:]) != list(shape):
                problems.append(f"{n}: shape {stack.shape} != {shape}")
            for chunk in stack.iter_chunks(128):
                if not torch.isfinite(chunk).all():
                    problems.append(f"{n}: non-finite weights")
                    break
    return problems
