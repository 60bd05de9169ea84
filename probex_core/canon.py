"""Canonicalise any layer to the 2-D matrix X (d_H × d_W) that ProbeX consumes.

A repo's tensors are grouped into *layers*: a linear weight, a conv kernel, a 1-D vector, or a
LoRA pair (A, B) whose layer is X = B @ A. The grouping works on names and shapes alone, so it
runs on a safetensors header before any weight byte is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

# (regex for the A / "down" factor, regex for the B / "up" factor); group 1 is the layer name.
_LORA_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEFT: base_model.model.fc1.lora_A.weight / lora_B.weight (adapter name sometimes kept)
    (re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_A(?:\.[^.]+)?\.weight$"), "lora_B"),
    # diffusers / kohya: ….to_q.lora.down.weight / ….lora.up.weight
    (re.compile(r"^(.+)\.lora\.down\.weight$"), "lora.up"),
    (re.compile(r"^(.+)\.lora_down\.weight$"), "lora_up"),
)


@dataclass(frozen=True)
class LayerSpec:
    """One candidate layer of a repo."""

    name: str  # canonical layer name, e.g. "fc1" or "blocks.0.attn.qkv"
    kind: str  # "linear" | "conv" | "vector" | "lora"
    tensors: tuple[str, ...]  # tensor names to read; for "lora": (A, B)
    shape: tuple[int, int]  # (d_H, d_W) of the canonical matrix


def to_matrix(t: torch.Tensor) -> torch.Tensor:
    """Reshape one tensor to 2-D float32.

    Linear (d_out, d_in) stays; a conv kernel (d_out, d_in, k…) becomes (d_out, d_in·k…) so each
    row is one output channel (the paper reshapes kernels the same way); a 1-D vector (bias,
    norm scale) becomes one column (d, 1).
    """
    t = t.detach().to(torch.float32)
    if t.ndim == 0:
        raise ValueError("a scalar has no matrix form")
    if t.ndim == 1:
        return t.reshape(-1, 1)
    return t.reshape(t.shape[0], -1)


def lora_product(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """X = scale · B @ A for a LoRA pair: A (r, d_in[, k…]), B (d_out, r[, 1…])."""
    a2, b2 = to_matrix(a), to_matrix(b)
    if b2.shape[1] != a2.shape[0]:
        raise ValueError(f"LoRA rank mismatch: B {tuple(b.shape)} vs A {tuple(a.shape)}")
    return scale * (b2 @ a2)


def _matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    if len(shape) == 0:
        return None
    if len(shape) == 1:
        return (int(shape[0]), 1)
    rest = 1
    for s in shape[1:]:
        rest *= int(s)
    return (int(shape[0]), rest)


def _lora_partner(name: str) -> tuple[str, str] | None:
    """For an A/down tensor name, return (layer name, B/up tensor name)."""
    for pattern, b_token in _LORA_PATTERNS:
        m = pattern.match(name)
        if m:
            layer = m.group(1)
            if b_token == "lora_B":
                partner = re.sub(r"\.lora_A((?:\.[^.]+)?)\.weight$", r".lora_B\1.weight", name)
            elif b_token == "lora.up":
                partner = name[: -len("lora.down.weight")] + "lora.up.weight"
            else:
                partner = name[: -len("lora_down.weight")] + "lora_up.weight"
            return layer, partner
    return None


def find_layers(
    tensor_shapes: Mapping[str, Sequence[int]], include_vectors: bool = False
) -> dict[str, LayerSpec]:
    """Group a repo's tensors into candidate layers, from names and shapes only.

    LoRA pairs become one "lora" layer named after the module they adapt. Weights of ≥ 2 dims
    are "linear" (2-D) or "conv" (> 2-D); 1-D tensors are skipped unless `include_vectors`.
    """
    layers: dict[str, LayerSpec] = {}
    used: set[str] = set()
    for name in sorted(tensor_shapes):
        pair = _lora_partner(name)
        if pair is None or pair[1] not in tensor_shapes:
            continue
        layer, b_name = pair
        a_shape, b_shape = tensor_shapes[name], tensor_shapes[b_name]
        layers[layer] = LayerSpec(
            name=layer,
            kind="lora",
            tensors=(name, b_name),
            shape=(int(b_shape[0]), _matrix_shape(a_shape)[1]),
        )
        used.update((name, b_name))
    for name in sorted(tensor_shapes):
        if name in used:
            continue
        shape = tensor_shapes[name]
        mshape = _matrix_shape(shape)
        if mshape is None or (len(shape) == 1 and not include_vectors):
            continue
        kind = "vector" if len(shape) == 1 else "linear" if len(shape) == 2 else "conv"
        layer = name[: -len(".weight")] if name.endswith(".weight") and kind != "vector" else name
        layers[layer] = LayerSpec(name=layer, kind=kind, tensors=(name,), shape=mshape)
    return layers


def assemble_layer(
    spec: LayerSpec, tensors: Mapping[str, torch.Tensor], lora_scale: float = 1.0
) -> torch.Tensor:
    """Build the canonical 2-D matrix of one layer from its tensors (read lazily by the caller)."""
    missing = [t for t in spec.tensors if t not in tensors]
    if missing:
        raise KeyError(f"layer {spec.name!r} needs tensors {missing}")
    if spec.kind == "lora":
        a, b = (tensors[t] for t in spec.tensors)
        x = lora_product(a, b, lora_scale)
    else:
        x = to_matrix(tensors[spec.tensors[0]])
    if tuple(x.shape) != spec.shape:
        raise ValueError(f"layer {spec.name!r}: got shape {tuple(x.shape)}, expected {spec.shape}")
    return x
