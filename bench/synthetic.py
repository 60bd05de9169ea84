"""Planted-signal synthetic Model Trees, for tests and benches.

A tree has a large base matrix W0 (the "foundation model"; different per tree — the nuisance
across trees). Class c owns a low-rank direction D_c = A_c Bᵀ with A_c = reshape(G z_c): a
linear function of a class latent z_c, so that a class "text" t_c = R z_c (+ noise) is
linearly aligned with it — the planted signal for zero-shot tests. A model that was "trained
on" classes S is X = W0 + Σ_{c∈S} a_c D_c + noise, with a per-model amplitude a_c.
Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SyntheticConfig:
    d_H: int = 32  # rows of each layer matrix
    d_W: int = 48  # columns
    n_classes: int = 10  # size of the class list (d_Y)
    n_models: int = 300  # models per tree
    classes_per_model: int = 3  # |S|: positives per model (1 = single-class, like SD LoRAs)
    rank: int = 2  # rank k of each class direction
    latent_dim: int | None = None  # dim of z_c; None → n_classes (near-independent classes)
    text_dim: int = 24  # width of class "text" embeddings
    text_noise: float = 0.05  # noise added to t_c = R z_c
    base_scale: float = 3.0  # size of W0 relative to a class direction (the nuisance)
    signal: float = 1.0  # size of each class direction
    noise: float = 0.5  # per-model noise, relative to a class direction
    amplitude_jitter: float = 0.5  # a_c ~ U[1 - j, 1 + j]
    # Share of each class update's output side that is private to the model (0 = none). A
    # fine-tune that starts from a fresh head moves its backbone along that head's random rows,
    # so the update for class c is (shared A_c + a model's own random H) times c's input
    # directions: D = (√(1-p) A_c + √p H) B_cᵀ. With p > 0 every class has its own input
    # directions B_c (else the private parts of all classes would overlap), and the class
    # signal is partly second-order: no linear function of X sees the private part.
    private_variance: float = 0.0


@dataclass
class SyntheticTree:
    X: torch.Tensor  # (n_models, d_H, d_W) float32
    Y: torch.Tensor  # (n_models, n_classes) multi-hot float32
    texts: torch.Tensor  # (n_classes, text_dim) class text embeddings
    class_names: list[str]
    W0: torch.Tensor  # (d_H, d_W)

    def split(
        self, fractions: tuple[float, float] = (0.6, 0.2), seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Random train/val/test index split (the rest after train and val is test)."""
        n = len(self.X)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
        return {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}


def make_tree(
    cfg: SyntheticConfig = SyntheticConfig(), seed: int = 0, class_seed: int | None = None
) -> SyntheticTree:
    """One synthetic tree. `class_seed` fixes the class latents/texts (shared across trees so
    that several trees use one class vocabulary); by default it equals `seed`."""
    g = torch.Generator().manual_seed(seed)
    gc = torch.Generator().manual_seed(seed if class_seed is None else class_seed)
    d_H, d_W, C, k = cfg.d_H, cfg.d_W, cfg.n_classes, cfg.rank
    L = cfg.latent_dim or C
    unit = 1.0 / math.sqrt(d_W)  # entries of size 1/√d_W keep ‖row‖ ≈ 1

    z = torch.randn(C, L, generator=gc)  # class latents
    R = torch.randn(L, cfg.text_dim, generator=gc) / math.sqrt(L)
    texts = z @ R + cfg.text_noise * torch.randn(C, cfg.text_dim, generator=gc)

    W0 = cfg.base_scale * unit * torch.randn(d_H, d_W, generator=g)
    G = torch.randn(d_H * k, L, generator=g) / math.sqrt(L)  # latent → A_c
    B = torch.linalg.qr(torch.randn(d_W, k, generator=g))[0]  # (d_W, k) orthonormal
    A = (z @ G.T).reshape(C, d_H, k)  # (C, d_H, k)
    D = cfg.signal * math.sqrt(d_W / k) * unit * A @ B.T  # (C, d_H, d_W)

    Y = torch.zeros(cfg.n_models, C)
    for i in range(cfg.n_models):
        Y[i, torch.randperm(C, generator=g)[: cfg.classes_per_model]] = 1.0
    j = cfg.amplitude_jitter
    amp = Y * (1 - j + 2 * j * torch.rand(cfg.n_models, C, generator=g))  # (N, C)
    noise = cfg.noise * unit * torch.randn(cfg.n_models, d_H, d_W, generator=g)
    p = cfg.private_variance
    if p == 0:
        X = W0 + torch.einsum("nc,chw->nhw", amp, D) + noise
    else:
        X = W0 + _private_updates(cfg, A, amp, p, g) + noise
    names = [f"class_{c:03d}" for c in range(C)]
    return SyntheticTree(X=X.float(), Y=Y, texts=texts.float(), class_names=names, W0=W0)


def _private_updates(
    cfg: SyntheticConfig, A: torch.Tensor, amp: torch.Tensor, p: float, g: torch.Generator
) -> torch.Tensor:
    """Σ_c a_c (√(1-p) A_c + √p H_c) B_cᵀ per model, with per-class input directions B_c
    (d_W × k, jointly orthonormal while C·k ≤ d_W) and H_c drawn per model, of A_c's size."""
    d_H, d_W, C, k = cfg.d_H, cfg.d_W, cfg.n_classes, cfg.rank
    q = torch.randn(d_W, C * k, generator=g)
    Bc = (torch.linalg.qr(q)[0] if C * k <= d_W else q / math.sqrt(d_W)).T.reshape(C, k, d_W)
    scale = cfg.signal / math.sqrt(k)
    a_rms = A.pow(2).mean().sqrt()
    out = torch.empty(len(amp), d_H, d_W)
    for i, a in enumerate(amp):
        cs = torch.nonzero(a).flatten()
        H = a_rms * torch.randn(len(cs), d_H, k, generator=g)
        coef = a[cs, None, None] * (math.sqrt(1 - p) * A[cs] + math.sqrt(p) * H)  # (n, d_H, k)
        out[i] = scale * torch.einsum("nhk,nkw->hw", coef, Bc[cs])
    return out


def make_trees(
    cfg: SyntheticConfig = SyntheticConfig(),
    n_trees: int = 3,
    seed: int = 0,
    shapes: list[tuple[int, int]] | None = None,
) -> list[SyntheticTree]:
    """Several trees over one class vocabulary; each has its own W0 (and optionally shape)."""
    trees = []
    for t in range(n_trees):
        c = cfg
        if shapes is not None:
            d_H, d_W = shapes[t % len(shapes)]
            c = SyntheticConfig(**{**cfg.__dict__, "d_H": d_H, "d_W": d_W})
        trees.append(make_tree(c, seed=seed * 1000 + t, class_seed=seed))
    return trees
