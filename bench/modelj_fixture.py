"""A miniature Model-J, written exactly as the official download script leaves it on disk.

Two subsets, as in SCIENCE.md §7, with a planted class signal so that experts can learn:
- a discriminative subset (`SupViT`): one Hugging Face cache per split,
  `SupViT/{train,val,test}/models--ProbeX--Model-J__SupViT__model_idx_NNNN/{refs,blobs,snapshots}`,
  snapshot files symlinked into `blobs/`, labels as a Python-literal list of CIFAR-100 names
  with underscores in the safetensors metadata (`dataset_chosen_targets`);
- a generative subset (`SD_200`): bare LoRA folders,
  `SD_200/{train,val,test,val_holdout,test_holdout}/model_idx_NNNN/pytorch_lora_weights.safetensors`,
  one WordNet id per model (`imagenet_class_id`); the holdout splits use classes no other
  split has; the base model (Stable Diffusion) is not in the download.

Each model's signal layer is W0 + Σ_{c ∈ its classes} a_c D_c + noise, with one rank-2
direction D_c per class (`synthetic.py`'s planted signal, written to real files); the other
layers are the base plus noise. A LoRA class's direction is a fixed linear function of the
text embedding of its prompt ("a photo of a tench"), so held-out classes are reachable
zero-shot, as CLIP-aligned classes are in the paper. Every byte is a function of the seed.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

VIT_LAYER = "vit.encoder.layer.{block}.{part}.weight"
VIT_PARTS = ("attention.output.dense", "intermediate.dense")  # d × d and 4d × d
LORA_MODULE = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"
CIFAR = (
    "apple", "aquarium_fish", "bear", "maple_tree", "pickup_truck", "sweet_pepper",
    "lawn_mower", "oak_tree", "palm_tree", "rabbit", "rocket", "willow_tree",
)  # fmt: skip
# ImageNet-1k WordNet ids: 8 seen by every LoRA split, 4 held out (holdout splits only)
WNIDS_SEEN = (
    "n01440764", "n01443537", "n01484850", "n01491361",
    "n01494475", "n01983481", "n02012849", "n02119789",
)  # fmt: skip
WNIDS_HELDOUT = ("n02100735", "n02110185", "n02096294", "n02102040")


@dataclass(frozen=True)
class ModelJSizes:
    """Models per split of the miniature (the real subsets hold hundreds to thousands)."""

    vit: tuple[int, int, int] = (60, 15, 20)  # train, val, test
    lora: tuple[int, int, int, int, int] = (48, 12, 16, 8, 8)  # + val_holdout, test_holdout
    d: int = 16  # ViT width (signal layer d × d); LoRA layers are d × d as well
    vit_blocks: int = 2  # blocks of two projections each
    signal_block: int = 1  # whose attention output projection carries the classes
    classes_per_model: int = 5  # of the 12 CIFAR names (Model-J: 50 of 100)
    noise: float = 0.9  # per-model noise against the class signal (unit RMS per direction)


def signal_layer_name(sizes: ModelJSizes) -> str:
    """The ViT weight that carries the classes (the others are the base plus noise)."""
    return VIT_LAYER.format(block=sizes.signal_block, part=VIT_PARTS[0])


def _directions(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    """(n, d, d) rank-2 class directions of unit RMS."""
    A, B = torch.randn(n, d, 2, generator=g), torch.randn(n, 2, d, generator=g)
    D = A @ B
    return D / D.pow(2).mean((1, 2), keepdim=True).sqrt()


def cache_file(cache: Path, folder: str, rev: str, rel: str, data: bytes) -> None:
    """Store a file as huggingface_hub does: a content-addressed blob and a snapshot symlink
    (refs are the caller's)."""
    blob = cache / folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = cache / folder / "snapshots" / rev / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def _st(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def _text_directions(
    wnids: tuple[str, ...], d: int, g: torch.Generator, encoder_spec: str
) -> torch.Tensor:
    """(n, d, d) rank-2 directions D_c = reshape(G t_c) B, t_c the class prompt's embedding."""
    from probex_core.classnames import class_name
    from probex_core.text import class_prompts, get_text_encoder

    T = get_text_encoder(encoder_spec).encode(class_prompts([class_name(w) for w in wnids]))
    T = T - T.mean(0)  # what all prompts share ("a photo of a") carries no class
    G = torch.randn(d * 2, T.shape[1], generator=g)
    B = torch.randn(2, d, generator=g)
    D = (T @ G.T).view(len(wnids), d, 2) @ B
    return D / D.pow(2).mean((1, 2), keepdim=True).sqrt()


def write_modelj(
    out: Path | str,
    seed: int = 0,
    sizes: ModelJSizes = ModelJSizes(),
    encoder_spec: str = "minilm",
) -> dict:
    """Write both subsets under `out` (`out/SupViT`, `out/SD_200`); returns what was written:
    per repo id its split and classes (the truth the hub itself declares)."""
    out = Path(out)
    g = torch.Generator().manual_seed(seed)
    # a fine-tune moves its base by a tenth: far less than two bases differ, as in Model-J
    d, noise, step = sizes.d, sizes.noise, 0.1
    truth: dict[str, dict] = {}

    # --- SupViT: per-split caches -------------------------------------------------------
    W0 = {
        VIT_LAYER.format(block=b, part=part): torch.randn(d * (1 + 3 * k), d, generator=g)
        for b in range(sizes.vit_blocks)
        for k, part in enumerate(VIT_PARTS)
    }
    signal_layer = signal_layer_name(sizes)
    D = _directions(len(CIFAR), d, g)
    idx = 0
    for split, n in zip(("train", "val", "test"), sizes.vit, strict=True):
        cache = out / "SupViT" / split
        for _ in range(n):
            chosen = torch.randperm(len(CIFAR), generator=g)[: sizes.classes_per_model]
            amp = 0.7 + 0.6 * torch.rand(len(chosen), generator=g)
            signal = torch.einsum("c,chw->hw", amp, D[chosen]) / math.sqrt(len(chosen))
            # every fine-tune moves each layer by `step` (RMS); in the signal layer that move
            # is class signal and noise at 1 : noise, so tree recovery sees the same tree
            # whatever the noise
            tensors = {name: w + step * torch.randn(w.shape, generator=g) for name, w in W0.items()}
            move = (signal + noise * torch.randn(d, d, generator=g)) / math.sqrt(1 + noise**2)
            tensors[signal_layer] = W0[signal_layer] + step * move
            tensors["classifier.weight"] = torch.randn(len(chosen), d, generator=g)
            names = sorted(CIFAR[i] for i in chosen.tolist())
            meta = {"dataset_chosen_targets": repr(names), "seed": str(idx)}
            repo = f"Model-J__SupViT__model_idx_{idx:04d}"
            rev = hashlib.sha1(f"{seed}-{repo}".encode()).hexdigest()
            folder = f"models--ProbeX--{repo}"
            cache_file(cache, folder, rev, "model.safetensors", _st(tensors, meta))
            (cache / folder / "refs").mkdir()
            (cache / folder / "refs" / "main").write_text(rev)
            truth[f"ProbeX/{repo}"] = {"split": split, "classes": names}
            idx += 1

    # --- SD_200: bare LoRA folders --------------------------------------------------------
    wnids = WNIDS_SEEN + WNIDS_HELDOUT
    DL = _text_directions(wnids, d, g, encoder_spec)
    base = out / "SD_200"
    (base / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)  # as local_dir leaves
    splits = ("train", "val", "test", "val_holdout", "test_holdout")
    idx = 0
    for split, n in zip(splits, sizes.lora, strict=True):
        pool = WNIDS_HELDOUT if split.endswith("holdout") else WNIDS_SEEN
        for _ in range(n):
            c = int(torch.randint(len(pool), (1,), generator=g))
            delta = DL[wnids.index(pool[c])] + noise * torch.randn(d, d, generator=g)
            U, S, Vh = torch.linalg.svd(delta)
            r = 4
            up, down = U[:, :r] * S[:r].sqrt(), S[:r].sqrt()[:, None] * Vh[:r]
            tensors = {f"{LORA_MODULE}.lora.up.weight": up, f"{LORA_MODULE}.lora.down.weight": down}
            folder = base / split / f"model_idx_{idx:04d}"
            folder.mkdir(parents=True)
            (folder / "pytorch_lora_weights.safetensors").write_bytes(
                _st(tensors, {"imagenet_class_id": pool[c]})
            )
            truth[f"ProbeX/Model-J__SD_200__{split}__model_idx_{idx:04d}"] = {
                "split": split,
                "classes": [pool[c]],
            }
            idx += 1
    return truth
