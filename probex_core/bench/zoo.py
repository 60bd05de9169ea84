"""`probex bench zoo`: the batched zoo trainer against one-at-a-time training.

Both sides train the same models (same initial weights, classes, hyperparameters and step
counts) with the same AdamW code; one side stacks M models per step, the other runs M=1
per model. One-at-a-time is timed on the first `n_single` models and reported as a rate.
"""

from __future__ import annotations

import random
import time

import torch

from probex_core.zoo.archs import CNN, MLP, LoraMLP, Params, ViT, new_head
from probex_core.zoo.data import image_pool
from probex_core.zoo.presets import ZooPreset
from probex_core.zoo.trainer import Hyper, MulticlassTask, OneVsRestTask, train_batched

TARGET_RATIO = 5.0
CHUNK = ZooPreset.__dataclass_fields__["chunk"].default  # models per batched run, as generated


def _setup(kind: str, m: int, steps: int, gen: torch.Generator):
    """(params, forward, task, hypers) for m fine-tunes of one architecture."""
    rng = random.Random(0)
    pool = image_pool(40, gen)
    hypers = [
        Hyper(10 ** rng.uniform(-3, -2.4), 1e-4, steps, 64, rng.choice(["constant", "cosine"]),
              rng.random() < 0.5, rng.random() < 0.5, i)
        for i in range(m)
    ]  # fmt: skip
    if kind == "lora":
        lora = LoraMLP(MLP(hidden=(256, 128)))
        base = {k: v[0] for k, v in lora.base.init(1, 100, gen).items()}
        target = torch.randint(0, 100, (m,), generator=gen)
        negatives = torch.stack([torch.randperm(100, generator=gen)[:60] for _ in range(m)])
        task = OneVsRestTask(pool, target, negatives)
        return lora.init(m, 1, gen), (lambda p, x: lora.forward_with_base(base, p, x)), task, hypers
    arch = {"mlp": MLP(), "vit": ViT(dim=32, depth=2, heads=2, mlp_dim=64), "cnn": CNN()}[kind]
    root = arch.init(1, 100, gen)
    params = {
        k: v.expand(m, *v.shape[1:]).clone() for k, v in root.items() if not k.startswith("head.")
    }
    params |= new_head(m, arch.feature_dim, 40, gen)
    classes = torch.stack([torch.randperm(100, generator=gen)[:40] for _ in range(m)])
    return params, arch.forward, MulticlassTask(pool, classes), hypers


def _one(params: Params, i: int) -> Params:
    return {k: v[i : i + 1] for k, v in params.items()}


def run(quick: bool = False) -> dict:
    """Print models/s of batched vs one-at-a-time training per architecture and the ratio."""
    m, steps, n_single = (32, 15, 4) if quick else (128, 40, 8)
    kinds = ["mlp", "lora"] if quick else ["mlp", "vit", "cnn", "lora"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the generator does (see generate_zoo)
    results: dict[str, dict] = {}
    try:
        print(
            f"{m} models x {steps} steps (batch 64), batched {CHUNK} at a time; "
            f"one-at-a-time timed on {n_single} of them; 1 thread"
        )
        print(
            f"{'arch':<6} {'batched models/s':>17} {'one-at-a-time models/s':>23} {'ratio':>7}  target >= {TARGET_RATIO:.0f}x"
        )
        for kind in kinds:
            gen = torch.Generator().manual_seed(0)
            params, forward, task, hypers = _setup(kind, m, steps, gen)
            t = time.perf_counter()
            for s in range(0, m, CHUNK):
                sub = {k: v[s : s + CHUNK] for k, v in params.items()}
                train_batched(
                    sub, forward, _subtask(task, slice(s, s + CHUNK)), hypers[s : s + CHUNK], gen
                )
            batched = m / (time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(n_single):
                single_task = _subtask(task, slice(i, i + 1))
                train_batched(_one(params, i), forward, single_task, hypers[i : i + 1], gen)
            single = n_single / (time.perf_counter() - t)
            results[kind] = {"batched_models_per_s": round(batched, 3),
                             "single_models_per_s": round(single, 3), "ratio": round(batched / single, 2)}  # fmt: skip
            print(f"{kind:<6} {batched:>17.2f} {single:>23.2f} {batched / single:>6.1f}x")
    finally:
        torch.set_num_threads(threads)
    total_b = sum(1 / r["batched_models_per_s"] for r in results.values())
    total_s = sum(1 / r["single_models_per_s"] for r in results.values())
    results["all"] = {
        "ratio": round(total_s / total_b, 2),
        "target": TARGET_RATIO,
        "models": m,
        "steps": steps,
    }
    print(f"all    one model of each arch: {total_s / total_b:.1f}x faster batched")
    return results


def _subtask(task: MulticlassTask | OneVsRestTask, sl: slice) -> MulticlassTask | OneVsRestTask:
    if isinstance(task, MulticlassTask):
        return MulticlassTask(task.pool, task.classes[sl])
    return OneVsRestTask(task.pool, task.target[sl], task.negatives[sl])
