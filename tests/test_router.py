"""The router: members go to their tree, fresh inits and foreign architectures go nowhere."""

from __future__ import annotations

import math

import pytest
import torch

from bench.trees import ForestSpec, _init, synthetic_forest
from probex_core.router import Router, tree_references
from probex_core.trees import WeightRecord, recover_trees

SPECS = [
    ForestSpec((4, 4)),
    ForestSpec((4, 4)),
    ForestSpec((3, 3), layer_shapes=((32, 32), (32, 48))),
]


@pytest.fixture(scope="module")
def routed():
    records, truth = synthetic_forest(SPECS, seed=5, documented=1.0)
    # hold out every third non-root model: the router never sees them
    held = {r.repo_id for i, r in enumerate(records) if truth[r.repo_id].parent and i % 3 == 0}
    seen = [r for r in records if r.repo_id not in held]
    rec = recover_trees(seen)
    refs = tree_references(rec, seen)
    calib = [(r, rec.models[r.repo_id].tree_id) for r in seen]
    router = Router.fit(refs, calib)
    true_to_rec = {truth[r.repo_id].tree_id: rec.models[r.repo_id].tree_id for r in seen}
    tests = [(r, true_to_rec[truth[r.repo_id].tree_id]) for r in records if r.repo_id in held]
    return router, tests, records


def test_held_out_members_go_to_their_tree(routed):
    router, tests, _ = routed
    assert len(tests) > 10
    results = [router.route(r) for r, _ in tests]
    assert [x.tree_id for x in results] == [t for _, t in tests]
    assert all(x.margin > 0 for x in results)


def test_fresh_init_of_a_zoo_architecture_is_unknown(routed):
    router, _, records = routed
    g = torch.Generator().manual_seed(123)
    for proto in (records[0], records[-1]):
        fresh = WeightRecord(
            "new/init",
            proto.signature,
            None,
            {n: _init(tuple(t.shape), g) for n, t in proto.layers.items()},
        )
        res = router.route(fresh)
        assert res.tree_id is None and "threshold" in res.reason
        assert res.distance > router.threshold


def test_unknown_signature_has_a_reason(routed):
    router, _, records = routed
    res = router.route(WeightRecord("x/y", "nope", None, dict(records[0].layers)))
    assert res.tree_id is None and "signature" in res.reason and math.isinf(res.distance)


def test_save_load_round_trip(routed, tmp_path):
    router, tests, _ = routed
    router.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router.json", "router.safetensors"]
    again = Router.load(tmp_path)
    assert again.threshold == router.threshold
    for r, _ in tests[:5]:
        a, b = router.route(r), again.route(r)
        assert a.tree_id == b.tree_id and a.distance == pytest.approx(b.distance, rel=1e-6)


# ---- the tiny zoo -------------------------------------------------------------------------------


def test_tiny_zoo_routing(zoo_recovery):
    records, manifest, rec = zoo_recovery  # trees recovered from every repo's weights
    split = {m["repo_id"]: m["split"] for m in manifest["models"]}
    documented = [r for r in records if split[r.repo_id] in ("root", "train", "val")]
    refs = tree_references(rec, documented)
    calib = [(r, rec.models[r.repo_id].tree_id) for r in documented]
    router = Router.fit(refs, calib)
    tests = [r for r in records if split[r.repo_id] == "test"]
    assert tests
    routed = {r.repo_id: router.route(r).tree_id for r in tests}
    assert routed == {r.repo_id: rec.models[r.repo_id].tree_id for r in tests}
    # a freshly initialised network of each zoo architecture belongs to no tree
    g = torch.Generator().manual_seed(7)
    protos = {r.signature: r for r in records if not r.adapter}
    for proto in protos.values():
        fresh = {n: _init(tuple(t.shape), g) for n, t in proto.layers.items()}
        res = router.route(WeightRecord("new/init", proto.signature, None, fresh))
        assert res.tree_id is None, res


def test_a_router_saved_half_way_is_refused_on_load(tmp_path):
    """router.json names the digest of the anchors it was written with: anchors from another
    save (an interrupted one) are refused, not silently paired."""
    import shutil

    from probex_core.router import Router

    g = torch.Generator().manual_seed(0)
    recs = [
        WeightRecord(f"o/m{i}", "sig", None, {"l": torch.randn(4, 4, generator=g)})
        for i in range(4)
    ]
    rec = recover_trees(recs)
    a = Router.fit(tree_references(rec, recs), [(r, rec.models[r.repo_id].tree_id) for r in recs])
    a.save(tmp_path / "a")
    Router.load(tmp_path / "a")  # a whole save loads
    other = [WeightRecord(r.repo_id, "sig", None, {"l": r.layers["l"] + 1}) for r in recs]
    rec_b = recover_trees(other)
    b = Router.fit(
        tree_references(rec_b, other), [(r, rec_b.models[r.repo_id].tree_id) for r in other]
    )
    b.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "router.safetensors", tmp_path / "a" / "router.safetensors")
    with pytest.raises(ValueError, match="interrupted save"):
        Router.load(tmp_path / "a")
