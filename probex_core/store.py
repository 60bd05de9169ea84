"""The on-disk format of a home's per-tree artifacts, owned here and read through here.

Per tree, under `artifacts/layers/<tree>/` (`TreeLayers`): one layer stack per chosen layer
(`<layer>.safetensors`: tensor "X" (N, d_H, d_W) float32 and the members' repo ids in row
order), each layer's reference matrices where layers are measured from a parent
(`<layer>.reference.safetensors`), and `layers.json` (members, layers and shapes, version,
transform, the layer screen). Under `artifacts/experts/<tree>/` (`TreeExperts`): one
checkpoint per method (`<method>.safetensors`: weights, the `build_model` arguments and a
JSON meta, no pickle) and `meta.json` (`ExpertMeta`). Every file is written atomically.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probex_core.catalog import Home
from probex_core.files import atomic_path, atomic_write_json, remove
from probex_core.models import WeightModel, build_model


def write_layer_stack(
    path: str | Path, repo_ids: Sequence[str], X: torch.Tensor | Iterable[torch.Tensor]
) -> Path:
    """Write one layer of many models as a safetensors file: tensor "X" (N, d_H, d_W) float32,
    metadata "repo_ids" (JSON list, row order). `X` may be one tensor or an iterable of
    (n_i, d_H, d_W) chunks, which are streamed to disk (the header is built from the first
    chunk's shape and N = len(repo_ids)). The file appears atomically (temp + os.replace).
    """
    path = Path(path)
    ids = list(repo_ids)
    with atomic_path(path) as tmp:
        if isinstance(X, torch.Tensor):
            if len(X) != len(ids):
                raise ValueError(f"{len(ids)} repo_ids for {len(X)} matrices")
            save_file(
                {"X": X.detach().float().contiguous()}, tmp, metadata={"repo_ids": json.dumps(ids)}
            )
        else:
            with open(tmp, "wb") as f:
                _stream_stack(f, ids, iter(X))
    return path


def _stream_stack(f: Any, ids: list[str], chunks: Iterator[torch.Tensor]) -> None:
    """Hand-written safetensors: 8-byte little-endian header size, JSON header, raw bytes."""
    first = next(chunks, None)
    if first is None:
        raise ValueError("no chunks to write")
    d_H, d_W = first.shape[1:]
    n = len(ids)
    header = {
        "__metadata__": {"repo_ids": json.dumps(ids)},
        "X": {"dtype": "F32", "shape": [n, d_H, d_W], "data_offsets": [0, 4 * n * d_H * d_W]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    written = 0
    for chunk in (first, *chunks):
        if tuple(chunk.shape[1:]) != (d_H, d_W):
            raise ValueError(f"chunk shape {tuple(chunk.shape)} differs from {(d_H, d_W)}")
        f.write(chunk.detach().float().contiguous().numpy().astype("<f4").tobytes())
        written += len(chunk)
    if written != n:
        raise ValueError(f"wrote {written} matrices for {n} repo_ids")


class LayerStack:
    """A read handle on a layer stack file; reads rows lazily through safe_open.get_slice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = safe_open(str(self.path), framework="pt")
        self._slice = self._f.get_slice("X")
        self.repo_ids: list[str] = json.loads(self._f.metadata()["repo_ids"])
        self.shape: tuple[int, int, int] = tuple(self._slice.get_shape())  # type: ignore[assignment]

    def __len__(self) -> int:
        return self.shape[0]

    def read(
        self, indices: int | slice | Sequence[int] | np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Rows by position; contiguous runs of sorted indices are read as one slice each."""
        if isinstance(indices, slice):
            return self._slice[indices]
        if isinstance(indices, int):
            return self._slice[indices : indices + 1][0]
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            return torch.empty(0, *self.shape[1:])
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        out = torch.empty(len(idx), *self.shape[1:])
        start = 0
        for end in range(1, len(s) + 1):
            if end == len(s) or s[end] != s[end - 1] + 1:
                out[torch.from_numpy(order[start:end])] = self._slice[
                    int(s[start]) : int(s[end - 1]) + 1
                ]
                start = end
        return out

    def iter_chunks(self, chunk_size: int = 256) -> Iterator[torch.Tensor]:
        for s in range(0, len(self), chunk_size):
            yield self._slice[s : s + chunk_size]

    def close(self) -> None:
        self._slice = None
        self._f = None

    def __enter__(self) -> LayerStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_layer_stack(path: str | Path) -> LayerStack:
    return LayerStack(path)


def save_expert(
    path: str | Path, model: WeightModel, meta: Mapping[str, Any] | None = None
) -> Path:
    """Weights as safetensors; metadata "probex_config" (build_model arguments) and
    "probex_meta" (caller's JSON-able dict). Written atomically; no pickle."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "probex_config": json.dumps(model.config),
        "probex_meta": json.dumps(dict(meta or {})),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def load_expert(path: str | Path) -> tuple[WeightModel, dict[str, Any]]:
    """Rebuild the model from its stored config and load its weights (eval mode)."""
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(md["probex_config"])
    model = build_model(config.pop("kind"), **config)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, json.loads(md.get("probex_meta", "{}"))


@dataclass(frozen=True)
class ExpertMeta:
    """A tree's `meta.json`: what its experts were trained on and where they are. A tree with
    too few documented models has `skipped` (the reason) and no checkpoints."""

    tree_id: str
    version: str  # the tree version the experts were built from (stale when it changes)
    code_version: str
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # key → checkpoint file
    skipped: str | None = None
    layer: str | None = None  # the layer every expert of the tree reads
    classes: tuple[str, ...] = ()  # label columns, in order
    encoder: str | None = None  # text encoder spec of the zero-shot expert
    settings: Mapping[str, Any] = field(default_factory=dict)  # ExpertSettings, as trained
    calibration: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per method
    sweep: Mapping[str, float] = field(default_factory=dict)  # validation score per layer
    seconds: float | None = None
    split_from: str | None = None  # "hub" (declared splits) or "hash"
    train_repos: tuple[str, ...] = ()
    val_repos: tuple[str, ...] = ()
    single_label: bool = False
    zero_shot_loss: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpertMeta:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for k in ("classes", "train_repos", "val_repos"):
            if k in values:
                values[k] = tuple(values[k])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, without the fields a skipped tree never has."""
        out = asdict(self)
        for k, v in list(out.items()):
            if k not in ("checkpoints", "tree_id", "version", "code_version") and v in (
                None,
                (),
                {},
            ):
                del out[k]
        for k in ("classes", "train_repos", "val_repos"):
            if k in out:
                out[k] = list(out[k])
        return out


@dataclass(frozen=True)
class _TreeFiles:
    """One tree's directory of one kind under a home."""

    home: Home
    tree_id: str


class TreeLayers(_TreeFiles):
    """A tree's extracted layers."""

    @property
    def dir(self) -> Path:
        return self.home.layer_dir(self.tree_id)

    def stack_path(self, layer: str) -> Path:
        return self.dir / f"{layer}.safetensors"

    def reference_path(self, layer: str) -> Path:
        return self.dir / f"{layer}.reference.safetensors"

    @property
    def index_path(self) -> Path:
        return self.dir / "layers.json"

    def index(self) -> dict:
        """layers.json; FileNotFoundError (saying what to materialise) before extraction."""
        if not self.index_path.is_file():
            raise FileNotFoundError(
                f"tree {self.tree_id}: no layers at {self.index_path} (materialise tree_layers)"
            )
        return json.loads(self.index_path.read_text())

    def write_index(self, index: Mapping[str, Any]) -> None:
        atomic_write_json(self.index_path, dict(index))

    def open(self, layer: str) -> LayerStack:
        return LayerStack(self.stack_path(layer))

    def read(self, layer: str, rows: Sequence[int] | slice | None = None) -> torch.Tensor:
        """Rows of one layer's stack (all of them by default)."""
        with self.open(layer) as stack:
            return stack.read(slice(0, len(stack)) if rows is None else rows)

    def reference(self, layer: str) -> torch.Tensor | None:
        """The layer's reference matrices (R, d_H, d_W), the root first; None for trees whose
        layers are not measured from a parent (LoRA trees: their layers are already ΔW)."""
        path = self.reference_path(layer)
        if not path.is_file():
            return None
        with LayerStack(path) as stack:
            return stack.read(slice(0, len(stack)))


class TreeExperts(_TreeFiles):
    """A tree's trained experts."""

    @property
    def dir(self) -> Path:
        return self.home.expert_dir(self.tree_id)

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> ExpertMeta:
        """meta.json; FileNotFoundError (saying what to materialise) before training."""
        if not self.meta_path.is_file():
            raise FileNotFoundError(
                f"tree {self.tree_id}: no experts at {self.meta_path} (materialise tree_experts)"
            )
        return ExpertMeta.from_json(json.loads(self.meta_path.read_text()))

    def write_meta(self, meta: ExpertMeta) -> None:
        atomic_write_json(self.meta_path, meta.to_json())

    def save(self, key: str, model: WeightModel, meta: Mapping[str, Any]) -> str:
        """Write the checkpoint `<key>.safetensors`; returns its file name."""
        path = self.dir / f"{key}.safetensors"
        save_expert(path, model, meta)
        return path.name

    def load(self, key: str, meta: ExpertMeta | None = None) -> tuple[WeightModel, dict]:
        """The checkpoint meta.json names for `key` ("probex", "zeroshot", a baseline …)."""
        meta = meta or self.meta()
        return load_expert(self.dir / meta.checkpoints[key])

    def remove_checkpoints(self) -> None:
        for path in self.dir.glob("*.safetensors"):
            remove(path)
