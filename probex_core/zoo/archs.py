"""Batched functional networks: M models' parameters stacked on a leading axis.

Every layer is a batched matmul (`torch.baddbmm`), so one Python step trains M small models
at once; convolutions are unfold + bmm because grouped convs and vmap over convs are slow on
this CPU (see STACK.md). Parameter names are the ones written to `model.safetensors`; every
tensor in a params dict has shape (M, *tensor_shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probex_core.zoo.data import IMAGE_SIZE

Params = dict[str, torch.Tensor]
IN_CHANNELS = 3
IN_FEATURES = IN_CHANNELS * IMAGE_SIZE * IMAGE_SIZE


def _uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from `gen`."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def linear(x: torch.Tensor, p: Params, name: str) -> torch.Tensor:
    """x (M, B, d_in) -> (M, B, d_out) with weight (M, d_out, d_in) and bias (M, d_out)."""
    return torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), x, p[f"{name}.weight"].transpose(1, 2))


def new_head(m: int, d_in: int, n_out: int, gen: torch.Generator) -> Params:
    """A freshly initialised classification head for M models."""
    return {
        "head.weight": _uniform((m, n_out, d_in), d_in, gen),
        "head.bias": _uniform((m, n_out), d_in, gen),
    }


@dataclass(frozen=True)
class MLP:
    """Flattened image -> hidden ReLU layers -> head. The paper's ProbeX reads `fc1.weight`."""

    hidden: tuple[int, ...] = (128, 64)  # widths of the hidden layers fc1, fc2, ...

    model_type = "zoo-mlp"

    @property
    def feature_dim(self) -> int:
        return self.hidden[-1]

    def config(self) -> dict:
        return {"in_features": IN_FEATURES, "hidden_sizes": list(self.hidden)}

    def init(self, m: int, n_out: int, gen: torch.Generator) -> Params:
        p: Params = {}
        d_in = IN_FEATURES
        for i, d in enumerate(self.hidden, start=1):
            p[f"fc{i}.weight"] = _uniform((m, d, d_in), d_in, gen)
            p[f"fc{i}.bias"] = _uniform((m, d), d_in, gen)
            d_in = d
        return p | new_head(m, d_in, n_out, gen)

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        """x (M, B, 3, H, W) -> (M, B, feature_dim)."""
        h = x.flatten(2)
        for i in range(1, len(self.hidden) + 1):
            h = torch.relu(linear(h, p, f"fc{i}"))
        return h

    def forward(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        return linear(self.features(p, x), p, "head")


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """Batched 3x3 conv as unfold + bmm: x (M, B, C, H, W), weight (M, C_out, C, 3, 3)."""
    m, b, c, h, w = x.shape
    cols = F.unfold(x.reshape(m * b, c, h, w), 3, padding=1, stride=stride)  # (M*B, C*9, L)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    cols = cols.view(m, b, c * 9, ho * wo).transpose(2, 3).reshape(m, b * ho * wo, c * 9)
    out = torch.baddbmm(bias.unsqueeze(1), cols, weight.flatten(2).transpose(1, 2))
    return out.view(m, b, ho, wo, -1).permute(0, 1, 4, 2, 3)  # (M, B, C_out, Ho, Wo)


@dataclass(frozen=True)
class CNN:
    """Three strided 3x3 convs (16x16 -> 8 -> 4 -> 2), global average pool, head."""

    channels: tuple[int, ...] = (16, 32, 64)  # output channels of conv1, conv2, conv3

    model_type = "zoo-cnn"

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]

    def config(self) -> dict:
        return {
            "in_channels": IN_CHANNELS,
            "image_size": IMAGE_SIZE,
            "channels": list(self.channels),
        }

    def init(self, m: int, n_out: int, gen: torch.Generator) -> Params:
        p: Params = {}
        c_in = IN_CHANNELS
        for i, c in enumerate(self.channels, start=1):
            p[f"conv{i}.weight"] = _uniform((m, c, c_in, 3, 3), c_in * 9, gen) * math.sqrt(3)
            p[f"conv{i}.bias"] = torch.zeros(m, c)
            c_in = c
        return p | new_head(m, c_in, n_out, gen)

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(1, len(self.channels) + 1):
            h = torch.relu(conv3x3(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], stride=2))
        return h.mean(dim=(3, 4))  # (M, B, C)

    def forward(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        return linear(self.features(p, x), p, "head")


@dataclass(frozen=True)
class ViT:
    """A small pre-norm vision transformer on 4x4 patches (16 tokens), mean-pooled."""

    dim: int = 48  # token width d
    depth: int = 2  # transformer blocks
    heads: int = 3  # attention heads (dim must divide evenly)
    mlp_dim: int = 96  # hidden width of each block's MLP
    patch: int = 4  # patch side in pixels

    model_type = "zoo-vit"

    @property
    def feature_dim(self) -> int:
        return self.dim

    @property
    def n_tokens(self) -> int:
        return (IMAGE_SIZE // self.patch) ** 2

    def config(self) -> dict:
        return {
            "image_size": IMAGE_SIZE,
            "patch_size": self.patch,
            "hidden_size": self.dim,
            "num_hidden_layers": self.depth,
            "num_attention_heads": self.heads,
            "intermediate_size": self.mlp_dim,
        }

    def init(self, m: int, n_out: int, gen: torch.Generator) -> Params:
        d, patch_in = self.dim, IN_CHANNELS * self.patch**2
        p: Params = {
            "patch_embed.weight": _uniform((m, d, patch_in), patch_in, gen),
            "patch_embed.bias": torch.zeros(m, d),
            "pos_embed": torch.randn((m, self.n_tokens, d), generator=gen) * 0.02,
        }
        for i in range(self.depth):
            b = f"blocks.{i}"
            for norm in ("norm1", "norm2"):
                p[f"{b}.{norm}.weight"] = torch.ones(m, d)
                p[f"{b}.{norm}.bias"] = torch.zeros(m, d)
            for name, (d_out, d_in) in {
                "attn.qkv": (3 * d, d),
                "attn.proj": (d, d),
                "mlp.fc1": (self.mlp_dim, d),
                "mlp.fc2": (d, self.mlp_dim),
            }.items():
                p[f"{b}.{name}.weight"] = _uniform((m, d_out, d_in), d_in, gen)
                p[f"{b}.{name}.bias"] = torch.zeros(m, d_out)
        p["norm.weight"], p["norm.bias"] = torch.ones(m, d), torch.zeros(m, d)
        return p | new_head(m, d, n_out, gen)

    def _norm(self, x: torch.Tensor, p: Params, name: str) -> torch.Tensor:
        w, b = p[f"{name}.weight"].unsqueeze(1), p[f"{name}.bias"].unsqueeze(1)
        return F.layer_norm(x, (self.dim,)) * w + b

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        m, b = x.shape[:2]
        n, s, hd = self.n_tokens, self.patch, self.dim // self.heads
        g = IMAGE_SIZE // s
        patches = x.view(m, b, IN_CHANNELS, g, s, g, s).permute(0, 1, 3, 5, 2, 4, 6)
        tok = linear(patches.reshape(m, b * n, -1), p, "patch_embed")  # (M, B*N, d)
        tok = (tok.view(m, b, n, -1) + p["pos_embed"].unsqueeze(1)).view(m, b * n, -1)
        for i in range(self.depth):
            blk = f"blocks.{i}"
            qkv = linear(self._norm(tok, p, f"{blk}.norm1"), p, f"{blk}.attn.qkv")
            q, k, v = qkv.view(m * b, n, 3, self.heads, hd).permute(
                2, 0, 3, 1, 4
            )  # (M*B, h, N, hd)
            att = F.scaled_dot_product_attention(q, k, v)
            att = att.transpose(1, 2).reshape(m, b * n, self.dim)
            tok = tok + linear(att, p, f"{blk}.attn.proj")
            hid = F.gelu(linear(self._norm(tok, p, f"{blk}.norm2"), p, f"{blk}.mlp.fc1"))
            tok = tok + linear(hid, p, f"{blk}.mlp.fc2")
        tok = self._norm(tok, p, "norm")
        return tok.view(m, b, n, self.dim).mean(dim=2)

    def forward(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        return linear(self.features(p, x), p, "head")


@dataclass(frozen=True)
class LoraMLP:
    """Rank-r LoRA adapters on a frozen MLP's hidden linears, plus a new 1-logit head.

    Adapter parameter names follow PEFT: `base_model.model.fc1.lora_A.weight` is A (r x d_in)
    and `...lora_B.weight` is B (d_out x r); the layer computes W x + (alpha / r) B A x.
    """

    base: MLP  # the frozen root's architecture
    rank: int = 4  # LoRA rank r
    alpha: float = 8.0  # LoRA alpha; the update is scaled by alpha / rank

    model_type = "zoo-mlp"
    prefix = "base_model.model."

    @property
    def target_modules(self) -> list[str]:
        return [f"fc{i}" for i in range(1, len(self.base.hidden) + 1)]

    def init(self, m: int, n_out: int, gen: torch.Generator) -> Params:
        """A ~ Linear init, B = 0 (PEFT's default), so every adapter starts at the root."""
        p: Params = {}
        d_in = IN_FEATURES
        for mod, d in zip(self.target_modules, self.base.hidden, strict=True):
            p[f"{self.prefix}{mod}.lora_A.weight"] = _uniform((m, self.rank, d_in), d_in, gen)
            p[f"{self.prefix}{mod}.lora_B.weight"] = torch.zeros(m, d, self.rank)
            d_in = d
        head = new_head(m, d_in, n_out, gen)
        return p | {f"{self.prefix}{k}": v for k, v in head.items()}

    def forward_with_base(self, base: Params, p: Params, x: torch.Tensor) -> torch.Tensor:
        """Logits for adapters `p` (M models) on top of one root `base` (unstacked tensors)."""
        h, scale = x.flatten(2), self.alpha / self.rank
        for mod in self.target_modules:
            a, b = p[f"{self.prefix}{mod}.lora_A.weight"], p[f"{self.prefix}{mod}.lora_B.weight"]
            out = h @ base[f"{mod}.weight"].T + base[f"{mod}.bias"]  # shared root weight
            out = out + scale * torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2))
            h = torch.relu(out)
        w, bias = p[f"{self.prefix}head.weight"], p[f"{self.prefix}head.bias"]
        return torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))


Arch = MLP | CNN | ViT
