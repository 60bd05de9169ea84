"""`recover_trees`: signature groups → distance clusters → arborescences, adapters attached
to the base whose weights they align with, declared cards checked against the result."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np
import torch

from probex_core.trees.arborescence import TreeStructure, tree_structure
from probex_core.trees.core import (
    Disagreement,
    ModelAssignment,
    TreeConfig,
    TreeInfo,
    TreeRecovery,
    WeightRecord,
    tree_id_for,
)
from probex_core.trees.distances import (
    adapter_alignment,
    cluster_by_distance,
    pairwise_distances,
    weight_kurtosis,
)


def _depths(parent: Mapping[str, str | None]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for node in parent:
        chain, cur = [], node
        while cur is not None and cur not in depth and cur not in chain:
            chain.append(cur)
            cur = parent.get(cur)
        base = depth.get(cur, -1) if cur is not None else -1
        for i, c in enumerate(reversed(chain)):
            depth[c] = base + 1 + i
    return depth


def recover_trees(
    records: Sequence[WeightRecord], config: TreeConfig | None = None
) -> TreeRecovery:
    """Recover every model's tree, parent and root from weights alone.

    1. group full models by signature; 2. cluster each group by relative weight distance;
    3. inside each cluster, MoTHer's arborescence; 4. attach LoRA adapters to their base;
    5. compare with declared bases.
    """
    config = config or TreeConfig()
    start = time.perf_counter()
    by_id = {r.repo_id: r for r in records}
    if len(by_id) != len(records):
        raise ValueError("duplicate repo ids in records")
    full = [r for r in records if not r.adapter]
    adapters = [r for r in records if r.adapter]

    parent: dict[str, str | None] = {}
    sig_of: dict[str, str] = {}
    structure: dict[str, TreeStructure] = {}  # by root repo
    for sig, recs, d, kurt in _clusters(full, config):
        par, setting = tree_structure(recs, d, kurt, config)
        for i, r in enumerate(recs):
            parent[r.repo_id] = recs[par[i]].repo_id if par[i] >= 0 else None
            sig_of[r.repo_id] = sig
        structure[recs[int(np.flatnonzero(par < 0)[0])].repo_id] = setting
    absent = absent_bases(adapters)
    for a in adapters:
        parent[a.repo_id] = _adapter_base(a, full, config) or absent[a.repo_id]
        sig_of[a.repo_id] = a.signature

    root_of = {repo: _root(parent, repo) for repo in parent}
    depth = _depths(parent)
    models = {
        repo: ModelAssignment(
            repo_id=repo,
            tree_id=tree_id_for(root_of[repo]),
            parent=parent[repo],
            depth=depth[repo],
            is_root=parent[repo] is None,
            signature=sig_of.get(repo, ""),
        )
        for repo in sorted(parent)
    }
    trees = _tree_infos(models, by_id, root_of, sig_of, structure)
    disagreements = _disagreements(records, models, absent)
    directions = {tid: t.direction for tid, t in trees.items() if t.direction}
    return TreeRecovery(models, trees, disagreements, directions, time.perf_counter() - start)


def _clusters(
    full: Sequence[WeightRecord], config: TreeConfig
) -> list[tuple[str, list[WeightRecord], np.ndarray, np.ndarray]]:
    """Full models grouped by signature, each group clustered by relative weight distance:
    (signature, members, their distances, their kurtosis) per cluster."""
    groups: dict[str, list[WeightRecord]] = defaultdict(list)
    for r in full:
        groups[r.signature].append(r)
    clusters = []
    for sig, recs in sorted(groups.items()):
        layers = sorted(recs[0].layers)
        missing = [r.repo_id for r in recs if sorted(r.layers) != layers]
        if missing:
            raise ValueError(f"signature {sig}: records {missing[:3]} lack layers {layers}")
        d = pairwise_distances(recs, layers)
        kurt = weight_kurtosis(recs, layers)
        labels = cluster_by_distance(d, config)
        for lab in np.unique(labels):
            idx = np.flatnonzero(labels == lab)
            clusters.append((sig, [recs[i] for i in idx], d[np.ix_(idx, idx)], kurt[idx]))
    return clusters


def _root(parent: Mapping[str, str | None], repo: str) -> str:
    while parent.get(repo) is not None:
        repo = parent[repo]  # type: ignore[assignment]
    return repo


def _tree_infos(
    models: Mapping[str, ModelAssignment],
    by_id: Mapping[str, WeightRecord],
    root_of: Mapping[str, str],
    sig_of: Mapping[str, str],
    structure: Mapping[str, TreeStructure],
) -> dict[str, TreeInfo]:
    members: dict[str, list[str]] = defaultdict(list)
    for m in models.values():
        members[m.tree_id].append(m.repo_id)
    trees = {}
    for tid, reps in sorted(members.items()):
        root = root_of[reps[0]]
        n_adapt = sum(by_id[r].adapter for r in reps)
        n_full = len(reps) - n_adapt  # an absent base is no member: then all are adapters
        kind = "full" if n_adapt == 0 else "lora" if n_full == int(root in by_id) else "mixed"
        setting = structure.get(root)
        trees[tid] = TreeInfo(
            tid,
            root,
            len(reps),
            sig_of.get(root, ""),
            kind,
            setting.direction if setting else "",
            asdict(setting) if setting else {},
        )
    return trees


def _disagreements(
    records: Sequence[WeightRecord],
    models: Mapping[str, ModelAssignment],
    absent: Mapping[str, str],
) -> list[Disagreement]:
    """Declared bases the recovered parents contradict (an adapter declaring a base that is
    not in the hub agrees with its absent root)."""
    out = []
    for r in records:
        found = models[r.repo_id].parent
        if r.declared_base is None or found in (
            r.declared_base,
            absent[r.repo_id] if r.repo_id in absent and r.declared_base else None,
        ):
            continue
        known = r.declared_base in models
        same = known and models[r.declared_base].tree_id == models[r.repo_id].tree_id
        out.append(Disagreement(r.repo_id, r.declared_base, found, same, known))
    return out


ABSENT = "absent:"  # prefix of a tree root that is not in the hub (adapters of a missing base)


def absent_bases(adapters: Sequence[WeightRecord]) -> dict[str, str]:
    """Per adapter, the name of its base in case that base is not in the hub.

    Adapters of one absent base (Model-J's LoRAs of Stable Diffusion) form one tree: those
    that declare the same base and adapt the same layers (one signature) share a root named
    `absent:<declared base>`; undeclared ones `absent:unknown-base`. A name that two
    signatures would share gets `@<signature prefix>` so each tree keeps one architecture.
    """
    names = {a.repo_id: f"{ABSENT}{a.declared_base or 'unknown-base'}" for a in adapters}
    sigs: dict[str, set[str]] = defaultdict(set)
    for a in adapters:
        sigs[names[a.repo_id]].add(a.signature)
    return {
        a.repo_id: names[a.repo_id]
        + (f"@{a.signature[:8]}" if len(sigs[names[a.repo_id]]) > 1 else "")
        for a in adapters
    }


def adapter_candidates(adapter: WeightRecord, full: Sequence[WeightRecord]) -> list[WeightRecord]:
    """Full models holding every layer the adapter adapts, with the same (d_out, d_in)."""
    want = {n: tuple(t.shape) for n, t in adapter.layers.items()}
    return [
        f
        for f in full
        if all(n in f.layers and tuple(f.layers[n].shape) == s for n, s in want.items())
    ]


def _adapter_base(a: WeightRecord, full: Sequence[WeightRecord], config: TreeConfig) -> str | None:
    """The full model an adapter was trained on: by shape, then by subspace alignment.

    With one candidate the shapes decide. With several, the weights decide when one
    candidate's alignment reaches `min_adapter_alignment`; otherwise the declared base is
    used if it is a candidate (the hint), else the best-aligned candidate.
    """
    cands = adapter_candidates(a, full)
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0].repo_id
    score = np.zeros(len(cands))
    for name, delta in a.layers.items():
        score += adapter_alignment(delta, torch.stack([c.layers[name] for c in cands]))
    score /= max(len(a.layers), 1)
    best = int(np.argmax(score))
    if score[best] >= config.min_adapter_alignment:
        return cands[best].repo_id
    ids = [c.repo_id for c in cands]
    if a.declared_base in ids:
        return a.declared_base
    return cands[best].repo_id
