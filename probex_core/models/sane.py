"""A cross-tree weight-space learner in the spirit of SANE / MultiZoo-SANE (Schürholt et al.):
the report's answer to "does learning inside trees beat learning across them?".

Each model's layer (d_H × d_W, the change from its root at unit RMS, as the experts read it)
is tokenised row-wise: every row is cut into chunks of `token` values, the last one
zero-padded, so layers of any width share one token size. A token carries learned encodings of
its row, its chunk within the row and its layer (one per tree's layer). One small transformer
encoder, trained on every tree at once, reads windows of `window` consecutive tokens, squeezes
each token to a `latent` code and a decoder rebuilds the tokens from the codes: the
reconstruction error is normalised by the batch's variance (per-batch normalised
reconstruction; padding is not scored). A supervised head on the window's mean encoding adds
the classes (softmax over the tree's classes for single-label trees, sigmoid per class
otherwise). A model's embedding is its mean encoding over all its windows, its
hyper-representation the sequence of its tokens' codes; a ridge read-out of either (per
tree, frozen) is the linear-probe head.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SaneConfig:
    token: int = 128  # values per token (a chunk of one row)
    window: int = 64  # consecutive tokens per training window
    d_model: int = 128
    heads: int = 4
    depth: int = 2  # encoder layers (the decoder has one)
    latent: int = 32  # per-token code the decoder rebuilds from
    max_rows: int = 1024
    max_chunks: int = 64
    gamma: float = 5.0  # weight of the supervised loss beside reconstruction
    # measured on the default zoo (seed 0): 30 epochs at d 128 / latent 32 / γ 5 left the
    # codes' ridge read-out at 0.83-0.92 (LoRA top-1 0.48) where d 64 / latent 16 / γ 1 over
    # 100 epochs gave its mean-encoding read-out 0.61-0.64; ~3 s per epoch over all 5 trees
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    val_every: int = 10


@dataclass
class LayerSet:
    """One tree's layer in tokens: X (N, n_tokens, token), its positions and labels."""

    layer_id: int
    tokens: torch.Tensor  # (N, T, token)
    rows: torch.Tensor  # (T,) row of each token
    chunks: torch.Tensor  # (T,) chunk of each token within its row
    valid: torch.Tensor  # (T, token) 1 where a value is real, 0 where it pads
    Y: torch.Tensor  # (N, K_all) multi-hot over the union of classes
    cols: torch.Tensor  # the tree's own columns of Y
    single_label: bool

    def __len__(self) -> int:
        return len(self.tokens)


def tokenise(X: torch.Tensor, token: int) -> tuple[torch.Tensor, ...]:
    """(N, d_H, d_W) → tokens (N, d_H·c, token), rows, chunks and the valid-value mask, c =
    ⌈d_W / token⌉ chunks per row."""
    N, d_H, d_W = X.shape
    c = -(-d_W // token)
    padded = F.pad(X.float(), (0, c * token - d_W)).reshape(N, d_H * c, token)
    rows = torch.arange(d_H).repeat_interleave(c)
    chunks = torch.arange(c).repeat(d_H)
    valid = (torch.arange(c * token) < d_W).float().reshape(c, token).repeat(d_H, 1)
    return padded, rows, chunks, valid


class Sane(nn.Module):
    def __init__(self, cfg: SaneConfig, n_layers: int, n_classes: int, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # seeded weights, the caller's generator untouched
            torch.manual_seed(seed)
            self._build(cfg, n_layers, n_classes)

    def _build(self, cfg: SaneConfig, n_layers: int, n_classes: int) -> None:
        d = cfg.d_model
        self.cfg = cfg
        self.embed = nn.Linear(cfg.token, d)
        self.row = nn.Embedding(cfg.max_rows, d)
        self.chunk = nn.Embedding(cfg.max_chunks, d)
        self.layer = nn.Embedding(n_layers, d)

        def stack(n: int) -> nn.TransformerEncoder:
            block = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0,
                                               batch_first=True, norm_first=True)  # fmt: skip
            return nn.TransformerEncoder(block, n, enable_nested_tensor=False)

        self.encoder, self.decoder = stack(cfg.depth), stack(1)
        self.to_latent, self.from_latent = nn.Linear(d, cfg.latent), nn.Linear(cfg.latent, d)
        self.out = nn.Linear(d, cfg.token)
        self.head = nn.Linear(d, n_classes)

    def _position(self, layer_id: int, rows: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        return self.row(rows) + self.chunk(chunks) + self.layer.weight[layer_id]

    def encode(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Tokens (B, W, token) at positions (W, d) → encodings (B, W, d)."""
        return self.encoder(self.embed(x) + pos)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rebuilt tokens, class logits of the window's mean encoding)."""
        h = self.encode(x, pos)
        z = self.to_latent(h)
        rebuilt = self.out(self.decoder(self.from_latent(z) + pos))
        return rebuilt, self.head(h.mean(1))


@dataclass
class SaneResult:
    model: Sane
    best_epoch: int
    best_metric: float
    epoch_seconds: float


def _window(data: LayerSet, W: int, gen: torch.Generator) -> slice:
    T = data.tokens.shape[1]
    start = int(torch.randint(0, max(T - W, 0) + 1, (1,), generator=gen))
    return slice(start, start + W)


def _loss(model: Sane, data: LayerSet, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Reconstruction error over the batch's variance (real values only) + γ · class loss."""
    w = _window(data, model.cfg.window, gen)
    x = data.tokens[idx, w]
    real = data.valid[w].bool().expand_as(x)
    rebuilt, logits = model(x, model._position(data.layer_id, data.rows[w], data.chunks[w]))
    recon = F.mse_loss(rebuilt[real], x[real]) / x[real].var().clamp_min(1e-8)
    cols = data.cols
    return recon + model.cfg.gamma * _supervised(logits[:, cols], data.Y[idx][:, cols],
                                                 data.single_label)  # fmt: skip


def _supervised(logits: torch.Tensor, Y: torch.Tensor, single: bool) -> torch.Tensor:
    if single:
        return F.cross_entropy(logits, Y.argmax(1))
    return F.binary_cross_entropy_with_logits(logits, Y)


def train_sane(
    train: list[LayerSet],
    score_val,
    cfg: SaneConfig,
    n_classes: int,
    seed: int = 0,
) -> SaneResult:
    """Train one learner on every tree's training models (each batch from one tree, the
    trees' batches shuffled together); keep the weights with the best `score_val(model)`."""
    model = Sane(cfg, len(train), n_classes, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    best = (-np.inf, 0, copy.deepcopy(model.state_dict()))
    seconds = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for data, idx in _batches(train, cfg.batch_size, gen):
            opt.zero_grad()
            _loss(model, data, idx, gen).backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
            metric = score_val(model)
            if metric > best[0]:
                best = (metric, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return SaneResult(model, best[1], float(best[0]), float(np.mean(seconds)))


def _batches(sets: list[LayerSet], size: int, gen: torch.Generator):
    batches = []
    for data in sets:
        order = torch.randperm(len(data), generator=gen)
        batches += [(data, order[s : s + size]) for s in range(0, len(data), size)]
    for k in torch.randperm(len(batches), generator=gen).tolist():
        yield batches[k]


@torch.no_grad()
def embed(
    model: Sane, data: LayerSet, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean encoding (N, d_model) over every window of each model, class logits (N, K_all) of
    the head on that mean, every token's latent code in order (N, T · latent): the model's
    hyper-representation)."""
    model.eval()
    T, W = data.tokens.shape[1], model.cfg.window
    mean = torch.zeros(len(data), model.cfg.d_model)
    codes = torch.zeros(len(data), T, model.cfg.latent)
    for s in range(0, T, W):
        w = slice(s, min(s + W, T))
        pos = model._position(data.layer_id, data.rows[w], data.chunks[w])
        for b in range(0, len(data), batch_size):
            h = model.encode(data.tokens[b : b + batch_size, w], pos)
            mean[b : b + batch_size] += h.sum(1)
            codes[b : b + batch_size, w] = model.to_latent(h)
    mean /= T
    return mean, model.head(mean), codes.flatten(1)
