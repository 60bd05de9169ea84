"""The layer store: one safetensors stack per layer, read lazily, streamed into training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from probex_core.models import build_model
from probex_core.store import open_layer_stack, write_layer_stack
from probex_core.train import StackData, TensorData, TrainConfig, train_expert

torch.set_num_threads(1)


@pytest.fixture()
def stack(tmp_path: Path) -> tuple[Path, torch.Tensor, list[str]]:
    X = torch.randn(23, 5, 7)
    ids = [f"org/model-{i}" for i in range(23)]
    return write_layer_stack(tmp_path / "layers" / "fc1.safetensors", ids, X), X, ids


def test_round_trip_and_lazy_reads(stack) -> None:
    path, X, ids = stack
    with open_layer_stack(path) as s:
        assert s.repo_ids == ids and s.shape == (23, 5, 7) and len(s) == 23
        assert torch.equal(s.read(slice(3, 9)), X[3:9])
        assert torch.equal(s.read(4), X[4])
        idx = [9, 2, 3, 4, 22, 3]
        assert torch.equal(s.read(idx), X[idx])
        assert torch.equal(s.read(np.array([], dtype=int)), X[:0])
        assert torch.equal(torch.cat(list(s.iter_chunks(10))), X)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["repo_ids"]) == ids
    assert [p.name for p in path.parent.iterdir()] == ["fc1.safetensors"]


def test_streamed_write_equals_tensor_write(tmp_path: Path, stack) -> None:
    path, X, ids = stack
    streamed = write_layer_stack(
        tmp_path / "s.safetensors", ids, (X[i : i + 6] for i in range(0, 23, 6))
    )
    with open_layer_stack(streamed) as s:
        assert s.repo_ids == ids and torch.equal(s.read(slice(None)), X)


def test_bad_writes_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 repo_ids for 2 matrices"):
        write_layer_stack(tmp_path / "a.safetensors", ["x"], torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="wrote 2 matrices for 3 repo_ids"):
        write_layer_stack(tmp_path / "b.safetensors", ["x", "y", "z"], iter([torch.zeros(2, 3, 3)]))
    assert list(tmp_path.iterdir()) == []


def test_streaming_loader_equals_in_memory(stack) -> None:
    path, X, _ = stack
    Y = (torch.rand(23, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    rows = np.array([0, 2, 3, 5, 8, 9, 10, 11, 15, 16, 20, 22])
    with open_layer_stack(path) as s:
        streamed = StackData(s, Y[rows], rows)
        memory = TensorData(X[rows], Y[rows])
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        for (a, ya), (b, yb) in zip(streamed.batches(5, g1), memory.batches(5, g2), strict=True):
            assert torch.equal(a, b) and torch.equal(ya, yb)
        cfg = TrainConfig(epochs=3, val_every=1, batch_size=4)
        val = StackData(s, Y[:4], np.arange(4))
        r1 = train_expert(build_model("probex", 5, 7, 4, r_U=3, r_V=3, r_T=4), streamed, val, cfg)
        r2 = train_expert(
            build_model("probex", 5, 7, 4, r_U=3, r_V=3, r_T=4),
            memory,
            TensorData(X[:4], Y[:4]),
            cfg,
        )
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
