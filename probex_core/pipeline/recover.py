"""Step 2: recover Model Trees from weights, fit the router, route every model."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from probex_core.catalog import Home, atomic_write_json, write_table
from probex_core.hub import HubSource, RepoRecord, read_layer
from probex_core.pipeline.common import StepReport, digest, frame
from probex_core.pipeline.crawl import load_records
from probex_core.router import Router, tree_references
from probex_core.trees import (
    TreeConfig,
    WeightRecord,
    architecture_signature,
    choose_recovery_layers,
    recover_trees,
)

MEMBER_COLUMNS = {
    "repo_id": "str",
    "tree_id": "str",
    "parent": "str",
    "depth": "int",
    "is_root": "bool",
}
SUMMARY_COLUMNS = {
    "tree_id": "str",
    "root_repo": "str",
    "kind": "str",
    "signature": "str",
    "size": "int",
    "n_documented": "int",
    "fingerprint": "str",
}
DISAGREE_COLUMNS = {
    "repo_id": "str",
    "declared_base": "str",
    "recovered_parent": "str",
    "declared_in_same_tree": "bool",
}
ROUTE_COLUMNS = {
    "repo_id": "str",
    "routed_tree": "str",
    "distance": "float",
    "margin": "float",
    "reason": "str",
}


def weight_records(
    source: HubSource, records: dict[str, RepoRecord], max_layers: int = 2
) -> list[WeightRecord]:
    """Read, lazily, the few layers tree recovery compares (the same names per signature)."""
    by_sig: dict[str, list[RepoRecord]] = defaultdict(list)
    for r in records.values():
        by_sig[architecture_signature(r.tensor_shapes())].append(r)
    out = []
    for sig, group in sorted(by_sig.items()):
        layers = choose_recovery_layers(group[0].tensor_shapes(), max_layers=max_layers)
        for r in group:
            out.append(
                WeightRecord(
                    repo_id=r.repo_id,
                    signature=sig,
                    declared_base=r.base_model[0] if r.base_model else None,
                    layers={name: read_layer(source, r, name) for name in layers},
                    adapter=r.kind == "lora",
                )
            )
    return out


def recover(home: Home, source: HubSource) -> StepReport:
    records = load_records(home)
    wrecs = weight_records(source, records)
    recovery = recover_trees(wrecs, TreeConfig())
    members = frame(recovery.model_rows(), MEMBER_COLUMNS)
    write_table(home, "tree_members", members)

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
    summary = frame(rows, SUMMARY_COLUMNS)
    write_table(home, "tree_summary", summary)
    dis = frame(
        [{k: d[k] for k in DISAGREE_COLUMNS} for d in recovery.disagreement_rows()],
        DISAGREE_COLUMNS,
    )
    write_table(home, "card_disagreements", dis)
    atomic_write_json(
        home.artifacts / "trees.json",
        {
            "trees": recovery.tree_rows(),
            "directions": recovery.directions,
            "seconds": recovery.seconds,
        },
    )
    routes = route_all(home, wrecs, recovery, records)
    return StepReport(
        summary={
            "trees": len(recovery.trees),
            "tree_ids": ",".join(sorted(recovery.trees)),
            "models": len(recovery.models),
            "card_disagreements": len(dis),
            "recovery_seconds": round(recovery.seconds, 2),
            "routed_unknown": int(routes.routed_tree.isna().sum()),
        },
        tables={"trees": summary, "card_disagreements": dis},
        data_version=digest(summary.to_dict("records")),
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
    routes = frame(rows, ROUTE_COLUMNS)
    write_table(home, "routes", routes)
    return routes
