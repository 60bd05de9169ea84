"""Train many small models at once: stacked parameters, batched matmuls, batched AdamW.

Every model has its own learning rate, weight decay, step count, schedule and augmentation,
held as (M,) tensors. The summed loss gives each model exactly its own gradient (models
share no parameters); a model whose steps are done simply stops being updated.
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

    Models are updated while step < their own `steps`; the batch shrinks to the still-active
    models so that short runs cost nothing once done (callers sort by steps for best effect).
    """
    m = len(hypers)
    b = hypers[0].batch_size
    assert all(h.batch_size == b for h in hypers), "one batch size per batched run"
    p = {k: v.detach().clone() for k, v in params.items()}
    state = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in p.items()}
    lr = torch.tensor([h.lr for h in hypers])
    wd = torch.tensor([h.weight_decay for h in hypers])
    steps = torch.tensor([h.steps for h in hypers])
    cosine = torch.tensor([h.scheduler == "cosine" for h in hypers])
    flip = torch.tensor([h.flip for h in hypers])
    crop = torch.tensor([h.crop for h in hypers])
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(int(steps.max())):
        active = (steps > t).nonzero().squeeze(1)
        n = len(active)
        full = n == m
        sub = p if full else {k: v[active] for k, v in p.items()}
        for v in sub.values():
            v.requires_grad_(True)
        cls, y = task.batch(active, b, gen)
        x = sample_images(task.pool, cls, flip[active], crop[active], gen)
        loss = task.loss(forward(sub, x), y).sum()
        grads = torch.autograd.grad(loss, list(sub.values()))
        frac = t / steps[active].float()
        sched = torch.where(cosine[active], 0.5 * (1 + torch.cos(math.pi * frac)), torch.ones(n))
        lr_t = lr[active] * sched
        # Adam's bias corrections folded into one per-model step size and a rescaled eps.
        c1, c2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
        step_size, eps_t = lr_t * math.sqrt(c2) / c1, eps * math.sqrt(c2)
        decay = 1 - lr_t * wd[active]
        with torch.no_grad():
            for (k, w), g in zip(sub.items(), grads, strict=True):
                w = w.detach()
                shape = (n,) + (1,) * (w.dim() - 1)
                mom, var = state[k]
                mom_a = mom if full else mom[active]
                var_a = var if full else var[active]
                mom_a.lerp_(g, 1 - beta1)
                var_a.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                w.mul_(decay.view(shape)).addcdiv_(
                    mom_a * step_size.view(shape), var_a.sqrt().add_(eps_t), value=-1
                )
                if full:
                    p[k] = w
                else:
                    p[k][active], mom[active], var[active] = w, mom_a, var_a
        if on_step is not None:
            on_step(n)
    return {k: v.detach() for k, v in p.items()}


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
