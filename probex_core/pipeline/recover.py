"""Step 2: recover Model Trees from weights, fit the router, route every model."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

import pandas as pd

from probex_core.catalog import Home, read_table, remove_table_parts, write_table
from probex_core.digest import digest
from probex_core.files import atomic_write_json
from probex_core.hub import HubSource, Rejected, RepoError, RepoRecord, read_layer, require_finite
from probex_core.pipeline.common import (
    CODE_VERSIONS,
    Progress,
    StepReport,
    Ticker,
)
from probex_core.pipeline.crawl import (
    CRAWL_PART,
    WEIGHTS_PART,
    layers_part,
    load_records,
    records_path,
    write_rejected,
)
from probex_core.router import Router, RouterConfig, tree_references
from probex_core.schemas import columns, frame
from probex_core.trees import (
    TreeConfig,
    WeightRecord,
    architecture_signature,
    choose_recovery_layers,
    is_head_layer,
    recover_trees,
)


def weight_records(
    source: HubSource,
    records: dict[str, RepoRecord],
    max_layers: int = 2,
    progress: Progress | None = None,
) -> tuple[list[WeightRecord], list[Rejected]]:
    """Read, lazily, the few layers tree recovery compares (the same names per signature).

    A model whose layers cannot be read, hold NaN or Inf, or whose architecture is not its
    declared base's (`architecture_mismatch`) is rejected here with its file and reason: it
    never enters a tree, so it cannot move any other model's tree, parent or answer.
    """
    sig = {i: architecture_signature(r.tensor_shapes()) for i, r in records.items()}
    rejected = architecture_mismatch(records, sig)
    skip = {r.repo_id for r in rejected}
    by_sig: dict[str, list[RepoRecord]] = defaultdict(list)
    for r in records.values():
        if r.repo_id not in skip:
            by_sig[sig[r.repo_id]].append(r)
    out = []
    tick = Ticker(progress)
    for sig, group in sorted(by_sig.items()):
        layers = choose_recovery_layers(group[0].tensor_shapes(), max_layers=max_layers)
        for r in group:
            tick(f"read the compared layers of {len(out):,}/{len(records):,} models")
            try:
                read = {n: require_finite(r, n, read_layer(source, r, n)) for n in layers}
            except RepoError as e:
                rejected.append(Rejected(e.repo_id, e.path, e.reason))
                continue
            out.append(
                WeightRecord(
                    repo_id=r.repo_id,
                    signature=sig,
                    declared_base=r.base_model[0] if r.base_model else None,
                    layers=read,
                    adapter=r.kind == "lora",
                )
            )
    return out, rejected


FINETUNE_RELATIONS = (None, "finetune")  # relations that keep the base's architecture


def architecture_mismatch(records: dict[str, RepoRecord], sig: dict[str, str]) -> list[Rejected]:
    """Full models that declare a full base in the hub as their fine-tune origin, yet miss
    one of its (non-head) tensors or hold one with another shape, and share their
    architecture with no other model: a truncated or tampered copy, not a tree member.
    (Heads may differ: fine-tunes change the label set.) `sig`: each record's
    architecture signature."""
    counts = Counter(sig.values())
    out = []
    for r in records.values():
        base = records.get(r.base_model[0]) if r.base_model else None
        if (
            base is None
            or base.repo_id == r.repo_id
            or r.kind != "full"
            or base.kind != "full"
            or r.base_model_relation not in FINETUNE_RELATIONS
            or sig[r.repo_id] == sig[base.repo_id]
            or counts[sig[r.repo_id]] > 1
        ):
            continue
        out.append(Rejected(r.repo_id, r.weights_file, _first_difference(r, base)))
    return out


def _first_difference(r: RepoRecord, base: RepoRecord) -> str:
    mine, theirs = r.tensor_shapes(), base.tensor_shapes()
    for name in sorted(set(mine) | set(theirs)):
        if is_head_layer(name.rsplit(".", 1)[0]):
            continue
        if name not in mine:
            what = f"lacks tensor {name!r}"
        elif name not in theirs:
            what = f"has tensor {name!r} that it lacks"
        elif tuple(mine[name]) != tuple(theirs[name]):
            what = f"tensor {name!r} has shape {list(mine[name])}, not {list(theirs[name])}"
        else:
            continue
        return f"wrong shape for the tree of its declared base {base.repo_id}: {what}"
    return f"wrong shape for the tree of its declared base {base.repo_id}"


RECOVERED_TABLES = ("tree_members", "tree_summary", "card_disagreements", "routes")


def recovery_inputs(home: Home) -> str:
    """What a recovery depends on: the crawled records (weights fingerprints, cards, paths),
    the recovery code version and the recovery and routing settings."""
    return digest(
        hashlib.sha256(records_path(home).read_bytes()).hexdigest(),
        CODE_VERSIONS["model_trees"],
        repr(TreeConfig()),
        repr(RouterConfig()),
    )


def _unchanged(home: Home, inputs: str) -> dict | None:
    """The last recovery's summary when it was computed from the same inputs and all of its
    outputs are still there (trees.json is written last, so a killed recovery never counts)."""
    path = home.artifacts / "trees.json"
    if not path.exists():
        return None
    last = json.loads(path.read_text())
    if last.get("inputs") != inputs or not (home.artifacts / "router" / "router.json").exists():
        return None
    if not all(any(home.table_dir(t).glob("*.parquet")) for t in RECOVERED_TABLES):
        return None
    return last.get("summary")


def recover(home: Home, source: HubSource, progress: Progress | None = None) -> StepReport:
    """Recover the trees, fit the router and route every model; a hub whose crawled records
    did not change since the last recovery keeps that recovery (nothing is re-read)."""
    inputs = recovery_inputs(home)
    summary = _unchanged(home, inputs)
    if summary is not None:
        if progress is not None:
            progress("trees unchanged since the last recovery (same crawled records)")
        return _report(home, {**summary, "reused": True})
    records = load_records(home)
    wrecs, rejected = weight_records(source, records, progress=progress)
    if progress is not None:
        progress(f"recovering trees of {len(wrecs):,} models")
    write_rejected(home, WEIGHTS_PART, "weights", rejected)
    recovery = recover_trees(wrecs, TreeConfig())
    keep = {CRAWL_PART, WEIGHTS_PART, *(layers_part(t) for t in recovery.trees)}
    remove_table_parts(home, "rejected", keep)  # layer rejections of trees now gone
    members = frame(recovery.model_rows(), "tree_members")
    write_table(home, "tree_members", members)

    write_table(home, "tree_summary", frame(_tree_rows(recovery, records), "tree_summary"))
    dis = frame(
        [{k: d[k] for k in columns("card_disagreements")} for d in recovery.disagreement_rows()],
        "card_disagreements",
    )
    write_table(home, "card_disagreements", dis)
    routes = route_all(home, wrecs, recovery, records)
    summary = {
        "trees": len(recovery.trees),
        "tree_ids": sorted(recovery.trees),
        "models": len(recovery.models),
        "rejected_weights": len(rejected),
        "card_disagreements": len(dis),
        "recovery_seconds": round(recovery.seconds, 2),
        "routed_unknown": int(routes.routed_tree.isna().sum()),
    }
    atomic_write_json(
        home.artifacts / "trees.json",
        {
            "trees": recovery.tree_rows(),
            "directions": recovery.directions,
            "seconds": recovery.seconds,
            "inputs": inputs,
            "summary": summary,
        },
    )
    return _report(home, {**summary, "reused": False})


def _tree_rows(recovery, records: dict[str, RepoRecord]) -> list[dict]:
    """One `tree_summary` row per recovered tree; its fingerprint is its members'."""
    rows = []
    for t in recovery.trees.values():
        ids = recovery.members(t.tree_id)
        rows.append(
            {
                "tree_id": t.tree_id,
                "root_repo": t.root,
                "kind": t.kind,
                "signature": t.signature,
                "size": t.size,
                "n_documented": sum(records[i].documented for i in ids),
                "fingerprint": digest(sorted(records[i].fingerprint for i in ids)),
            }
        )
    return rows


def _report(home: Home, summary: dict) -> StepReport:
    # read back from the tables in both paths (fresh and reused), so the data version of the
    # same trees is the same whichever path wrote them
    trees = read_table(home, "tree_summary")
    return StepReport(
        summary=summary,
        tables={"trees": trees, "card_disagreements": read_table(home, "card_disagreements")},
        data_version=digest(trees.to_dict("records")),
    )


def route_all(
    home: Home, wrecs: list[WeightRecord], recovery, records: dict[str, RepoRecord]
) -> pd.DataFrame:
    """Fit the router (calibrated on documented models) and route every model with it."""
    refs = tree_references(recovery, wrecs)
    calibration = [
        (w, recovery.models[w.repo_id].tree_id) for w in wrecs if records[w.repo_id].documented
    ]
    router = Router.fit(refs, calibration)
    router.save(home.artifacts / "router")
    rows = []
    for w in wrecs:
        res = router.route(w)
        rows.append(
            {
                "repo_id": w.repo_id,
                "routed_tree": res.tree_id,
                "distance": res.distance,
                "margin": res.margin,
                "reason": res.reason,
            }
        )
    routes = frame(rows, "routes")
    write_table(home, "routes", routes)
    return routes
