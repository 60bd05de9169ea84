"""Layers as experts read them: each member's change from its recovered parent."""

from __future__ import annotations

import torch

from probex_core.pipeline.layers import layer_transform, member_references, nearest_reference


def test_members_are_measured_from_their_recovered_parents() -> None:
    ids = ["root", "a", "b", "a1", "a2", "b1"]
    parents = {"root": None, "a": "root", "b": "root", "a1": "a", "a2": "a", "b1": "b"}
    refs, ref_of = member_references(ids, parents, "root")
    assert refs == ["root", "a", "b"]
    assert [refs[j] for j in ref_of] == ["root", "root", "root", "a", "a", "b"]
    torch.manual_seed(0)
    W = {"root": torch.randn(4, 5)}
    for child, parent in [("a", "root"), ("b", "root"), ("a1", "a"), ("a2", "a"), ("b1", "b")]:
        W[child] = W[parent] + 0.1 * torch.randn(4, 5)
    X = torch.stack([W[i] for i in ids])
    D = layer_transform(X, X[[ids.index(refs[j]) for j in ref_of]])
    assert torch.equal(D[0], torch.zeros(4, 5))  # the root is its own reference
    expected = (W["a1"] - W["a"]) / (W["a1"] - W["a"]).pow(2).mean().sqrt()
    assert torch.allclose(D[3], expected)
    assert torch.allclose(D[1:].pow(2).mean((1, 2)), torch.ones(5))  # unit RMS


def test_a_model_never_seen_is_measured_from_the_nearest_reference() -> None:
    torch.manual_seed(1)
    R = torch.randn(3, 4, 5)
    new = R[[2, 0]] + 0.01 * torch.randn(2, 4, 5)
    assert torch.equal(nearest_reference(new, R), R[[2, 0]])


def test_a_star_tree_keeps_the_root_as_every_reference() -> None:
    refs, ref_of = member_references(["r", "x", "y"], {"r": None, "x": "r", "y": "r"}, "r")
    assert refs == ["r"] and ref_of == [0, 0, 0]
