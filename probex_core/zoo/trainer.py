"""Train many small models at once: stacked parameters, batched matmuls, per-model AdamW.

Every model has its own learning rate, weight decay, step count, schedule and augmentation.
The summed loss gives each model exactly its own gradient (models share no parameters); a
model whose steps are done simply stops being updated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probex_core.zoo.archs import Params

Forward = Callable[
    [Params, torch.Tensor], torch.Tensor
]  # (params, x (M,B,3,H,W)) -> logits (M,B,k)


@dataclass(frozen=True)
class Hyper:
    """One model's training hyperparameters (written to its card when documented)."""

    lr: float  # peak AdamW learning rate
    weight_decay: float  # decoupled (AdamW) weight decay
    steps: int  # optimiser steps
    batch_size: int  # images per step
    scheduler: str  # "constant" or "cosine"
    flip: bool  # random horizontal flips
    crop: bool  # random translations by up to 2 pixels (pad-and-crop)
    seed: int  # seeds the new head's initialisation
    lp_steps: int = 0  # linear-probe steps (frozen backbone) before these `steps`

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def sample_images(
    pool: torch.Tensor,
    cls: torch.Tensor,
    flip: torch.Tensor,
    crop: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """Random images of classes `cls` (M, B) with per-model flip/crop -> (M, B, C, H, W).

    Augmentation is folded into one pixel gather: a flip mirrors the column index and a crop
    shifts both indices by up to 2 pixels with edge replication (pad-and-crop); flip and
    crop are (M,) bools, drawn per image when the model's flag is set.
    """
    n_cls, per_class, c, h, w = pool.shape
    m, b = cls.shape
    img = cls * per_class + torch.randint(0, per_class, (m, b), generator=gen)
    x = pool.view(n_cls * per_class, c, h * w).index_select(0, img.view(-1))  # (M*B, C, H*W)
    coin = (torch.rand(m, b, generator=gen) < 0.5) & flip[:, None]
    shift = torch.randint(-2, 3, (2, m, b), generator=gen) * crop[None, :, None]
    rows = (torch.arange(h).view(1, 1, h, 1) + shift[0][..., None, None]).clamp(0, h - 1)
    cols = torch.arange(w).view(1, 1, 1, w).expand(m, b, 1, w)
    cols = torch.where(coin[..., None, None], w - 1 - cols, cols)
    cols = (cols + shift[1][..., None, None]).clamp(0, w - 1)
    pix = (rows * w + cols).view(m * b, 1, h * w).expand(m * b, c, h * w)
    return x.gather(2, pix).view(m, b, c, h, w)


class MulticlassTask:
    """Each model classifies images of its own k classes (local labels 0..k-1)."""

    def __init__(self, pool: torch.Tensor, classes: torch.Tensor):
        self.pool = pool  # (n_classes, per_class, 3, H, W)
        self.classes = classes  # (M, k) global class ids

    def batch(
        self, idx: torch.Tensor, b: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(classes (M', B) of the images to draw, targets (M', B)) for models `idx`."""
        cls = self.classes[idx]
        y = torch.randint(0, cls.shape[1], (len(idx), b), generator=gen)
        return cls.gather(1, y), y

    @staticmethod
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m, b, k = logits.shape
        return (
            F.cross_entropy(logits.reshape(m * b, k), y.reshape(-1), reduction="none")
            .view(m, b)
            .mean(1)
        )


class AttributeTask(MulticlassTask):
    """Pretraining on another task: name the colour and the shape of an image of any class.

    Logits are (colour 10 | shape 10); the target is the global class id, whose colour is
    id // n_shapes and shape id % n_shapes (data.CLASSES order)."""

    n_attr = 10

    def batch(
        self, idx: torch.Tensor, b: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cls, y = super().batch(idx, b, gen)
        return cls, cls

    @classmethod
    def loss(cls, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = cls.n_attr
        colour = MulticlassTask.loss(logits[..., :a], y // a)
        shape = MulticlassTask.loss(logits[..., a:], y % a)
        return colour + shape


class OneVsRestTask:
    """Each model detects one target class against the others (balanced batches, 1 logit)."""

    def __init__(self, pool: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor):
        self.pool = pool  # (n_classes, per_class, 3, H, W)
        self.target = target  # (M,) global class id of each model's class
        self.negatives = negatives  # (M, S) global class ids used as negatives

    def batch(
        self, idx: torch.Tensor, b: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = len(idx)
        y = (torch.rand(m, b, generator=gen) < 0.5).long()
        neg = self.negatives[idx].gather(
            1, torch.randint(0, self.negatives.shape[1], (m, b), generator=gen)
        )
        return torch.where(y.bool(), self.target[idx, None].expand(m, b), neg), y

    @staticmethod
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.squeeze(-1), y.float(), reduction="none"
        ).mean(1)


def train_batched(
    params: Params,
    forward: Forward,
    task: MulticlassTask | OneVsRestTask,
    hypers: list[Hyper],
    gen: torch.Generator,
    on_step: Callable[[int], None] | None = None,
) -> Params:
    """AdamW on all M stacked models together; returns the trained (detached) params.

    Models are updated while step < their own `steps`. They are held in order of descending
    `steps` (a stable sort, so callers that pass them sorted, as `generate_zoo` does, keep
    their order), which makes the models still training a prefix: the batch shrinks to a
    slice of the stacked tensors, with no gathering or scattering of parameters. The update
    is exactly `torch.optim.AdamW` per model (see `_AdamW`; a test holds it to 1e-6).
    """
    m = len(hypers)
    b = hypers[0].batch_size
    assert all(h.batch_size == b for h in hypers), "one batch size per batched run"
    order = sorted(range(m), key=lambda i: -hypers[i].steps)
    hypers = [hypers[i] for i in order]
    perm = torch.tensor(order)
    store = {k: v.detach()[perm] for k, v in params.items()}  # a copy, in training order
    flip = torch.tensor([h.flip for h in hypers])
    crop = torch.tensor([h.crop for h in hypers])
    axes = {k: list(range(v.dim())) for k, v in store.items()}  # order of the stored axes
    opt = None
    for t in range(hypers[0].steps):
        n = sum(h.steps > t for h in hypers)
        sub = {k: _view(v, axes[k])[:n].detach().requires_grad_(True) for k, v in store.items()}
        cls, y = task.batch(perm[:n], b, gen)
        x = sample_images(task.pool, cls, flip[:n], crop[:n], gen)
        loss = task.loss(forward(sub, x), y).sum()
        grads = torch.autograd.grad(loss, list(sub.values()))
        if opt is None:  # now that the gradients' layouts are known
            axes = {k: _layout(g) for k, g in zip(store, grads, strict=True)}
            store = {k: v.permute(axes[k]).contiguous() for k, v in store.items()}
            opt = _AdamW(list(store.values()), hypers)
        opt.step([g.permute(axes[k]) for k, g in zip(store, grads, strict=True)], t, n)
        if on_step is not None:
            on_step(n)
    out = {k: _view(v, axes[k]).contiguous() for k, v in store.items()}
    return {k: v[torch.argsort(perm)] for k, v in out.items()}


class _AdamW:
    """AdamW for stacked models, each with its own scheduled lr and weight decay.

    The update is torch's fused CPU AdamW kernel (the one behind
    `torch.optim.AdamW(fused=True)`), called once per model on that model's rows: one pass
    over weight, gradient and moments. Seven or eight batched elementwise ops, each a
    memory-bound pass over all M models, took over half of every training step.
    """

    betas, eps = (0.9, 0.999), 1e-8

    def __init__(self, stored: list[torch.Tensor], hypers: list[Hyper]):
        self.hypers = hypers
        moments = [(torch.zeros_like(w), torch.zeros_like(w)) for w in stored]
        self.rows = [  # per model: its (weights, first moments, second moments)
            ([w[i] for w in stored], [mom[i] for mom, _ in moments], [v[i] for _, v in moments])
            for i in range(len(hypers))
        ]
        self.count = torch.zeros(())  # the step number the kernel's bias corrections use

    def step(self, grads: list[torch.Tensor], t: int, n: int) -> None:
        """Step t (0-based) of the first n models; grads (n, ...) are in the stored layout."""
        self.count.fill_(t + 1)
        counts = [self.count] * len(grads)
        rows = [g.contiguous().unbind(0) for g in grads]  # the kernel assumes contiguity
        for i, h in enumerate(self.hypers[:n]):
            lr = h.lr * (
                0.5 * (1 + math.cos(math.pi * t / h.steps)) if h.scheduler == "cosine" else 1
            )
            weights, mom, var = self.rows[i]
            torch._fused_adamw_(
                weights, [g[i] for g in rows], mom, var, [], counts, lr=lr,
                beta1=self.betas[0], beta2=self.betas[1], weight_decay=h.weight_decay,
                eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip


def _layout(g: torch.Tensor) -> list[int]:
    """Axis order in which gradient `g` (M, ...) is contiguous, model axis first.

    Autograd returns the gradient of a weight used as `w.transpose(1, 2)` in a bmm as a
    transposed view. Storing weight and moments in the gradient's order keeps the update a
    pass over contiguous memory; copying every gradient to the weight's order cost as much
    as the update itself.
    """
    order = [0, *sorted(range(1, g.dim()), key=lambda d: -g.stride(d))]
    return order if g.permute(order).is_contiguous() else list(range(g.dim()))


def _view(stored: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """The (M, *shape) view of a tensor stored as `tensor.permute(axes)`."""
    return stored.permute(sorted(range(len(axes)), key=axes.__getitem__))


@torch.no_grad()
def multiclass_accuracy(
    forward: Forward,
    params: Params,
    eval_pool: torch.Tensor,
    classes: torch.Tensor,
    chunk: int = 16,
) -> torch.Tensor:
    """Accuracy of each model on held-out images of its own classes -> (M,)."""
    m, k = classes.shape
    e = eval_pool.shape[1]
    y = torch.arange(k).repeat_interleave(e)
    out = []
    for s in range(0, m, chunk):
        sl = slice(s, s + chunk)
        x = eval_pool[classes[sl]].flatten(1, 2)  # (m', k*E, 3, H, W)
        logits = forward({n: v[sl] for n, v in params.items()}, x)
        out.append((logits.argmax(-1) == y).float().mean(1))
    return torch.cat(out)


@torch.no_grad()
def attribute_accuracy(
    forward: Forward, params: Params, eval_pool: torch.Tensor, chunk: int = 2000
) -> float:
    """Share of eval images (one model) whose colour and shape are both named right."""
    a = AttributeTask.n_attr
    x = eval_pool.flatten(0, 1)
    y = torch.arange(eval_pool.shape[0]).repeat_interleave(eval_pool.shape[1])
    right = []
    for s in range(0, len(x), chunk):
        logits = forward(params, x[None, s : s + chunk])[0]
        yy = y[s : s + chunk]
        right.append((logits[:, :a].argmax(1) == yy // a) & (logits[:, a:].argmax(1) == yy % a))
    return torch.cat(right).float().mean().item()


@torch.no_grad()
def balanced_accuracy(
    forward: Forward,
    params: Params,
    eval_pool: torch.Tensor,
    target: torch.Tensor,
    negatives: torch.Tensor,
    chunk: int = 32,
) -> torch.Tensor:
    """Balanced one-vs-rest accuracy (mean of TPR and TNR at logit 0) of each model -> (M,).

    Negatives are the first eval image of every class in the model's negatives table.
    """
    out = []
    for s in range(0, len(target), chunk):
        sl = slice(s, s + chunk)
        pos = eval_pool[target[sl]]  # (m', E, ...)
        neg = eval_pool[negatives[sl], 0]  # (m', S, ...)
        logits = forward({n: v[sl] for n, v in params.items()}, torch.cat([pos, neg], 1)).squeeze(
            -1
        )
        e = pos.shape[1]
        tpr = (logits[:, :e] > 0).float().mean(1)
        tnr = (logits[:, e:] <= 0).float().mean(1)
        out.append((tpr + tnr) / 2)
    return torch.cat(out)
