"""`generate_zoo`: pretrain roots, fine-tune their descendants in batches, write a local hub.

Everything random is derived from the seed (torch generators for weights and images,
`random.Random` for plans and names), so one seed gives one zoo, byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from probex_core.zoo.archs import CNN, MLP, LoraMLP, Params, ViT, linear, new_head
from probex_core.zoo.data import CLASSES, ImageJitter, heldout_classes, image_pool
from probex_core.zoo.presets import PRESETS, TreeSpec, ZooPreset
from probex_core.zoo.trainer import (
    AttributeTask,
    Hyper,
    MulticlassTask,
    OneVsRestTask,
    attribute_accuracy,
    balanced_accuracy,
    multiclass_accuracy,
    train_batched,
)
from probex_core.zoo.writer import model_card, prune_hub, write_json_atomic, write_repo

# A fine-tune "clearly beats chance" when its accuracy on held-out images of its own classes
# is at least chance + MIN_MARGIN (k=40: 0.175 vs 0.025; one-vs-rest: balanced 0.65 vs 0.5).
MIN_MARGIN = 0.15
DOCUMENTED_SPLITS = ("root", "train", "val")
USERS = (
    "amaru-k", "bexley", "calloway-ml", "dunmore", "elowen", "fjordbyte", "galeforce",
    "hollis-r", "ivarsen", "juniper-lab", "kestrel", "lumenfold", "marisol", "nightjar-ai",
    "oakhaven", "pemberton", "quillon", "rosalind-t", "saffron", "thistle", "umbra-dev",
    "vantablue", "wrenfield", "xanthe", "yarrow", "zephyrine", "brackenridge", "cobalt-owl",
    "driftwood", "emberly",
)  # fmt: skip
ARCH_NAMES = {MLP: "ZooMLPForImageClassification", CNN: "ZooCNNForImageClassification",
              ViT: "ZooViTForImageClassification"}  # fmt: skip


class ZooTrainingError(RuntimeError):
    """A fine-tune did not clearly beat chance: the zoo would carry no signal."""


def _gen(seed: int, *tags: object) -> torch.Generator:
    """An independent torch generator for one purpose, derived from the seed and tags."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class Planned:
    """One model to train and write; becomes one manifest row."""

    repo_id: str
    tree_id: str
    parent: str | None
    depth: int
    split: str
    classes: list[int]  # global class ids, in the order of the model's head
    hyper: Hyper
    parent_idx: int | None = None  # index of the first-level parent inside its tree's plan
    card_base_model: str | None = None
    card_lies: bool = False
    accuracy: float = float("nan")
    chance: float = float("nan")

    @property
    def documented(self) -> bool:
        return self.split in DOCUMENTED_SPLITS

    def manifest_row(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "tree_id": self.tree_id,
            "parent": self.parent,
            "depth": self.depth,
            "split": self.split,
            "training_classes": [CLASSES[c] for c in self.classes],
            "documented": self.documented,
            "card_base_model": self.card_base_model,
            "card_lies": self.card_lies,
            "hyperparameters": self.hyper.as_dict(),
            "accuracy": round(self.accuracy, 6),
            "chance": round(self.chance, 6),
        }


class _Namer:
    """Neutral, unique `<user>/model-<6 hex>` repo ids that say nothing about the tree."""

    def __init__(self, seed: int):
        self.rng, self.used = random.Random(f"probex-zoo-names-{seed}"), set()

    def __call__(self) -> str:
        while True:
            rid = f"{self.rng.choice(USERS)}/model-{self.rng.getrandbits(24):06x}"
            if rid not in self.used:
                self.used.add(rid)
                return rid


def _plan_tree(
    spec: TreeSpec, preset: ZooPreset, seed: int, heldout: list[int], namer: _Namer
) -> list[Planned]:
    """Descendants of one tree: depth, parent, split, classes and hyperparameters."""
    rng = random.Random(f"probex-zoo-plan-{seed}-{spec.tree_id}")
    seen = [c for c in range(len(CLASSES)) if c not in set(heldout)]
    n = spec.splits.total
    n1 = n // (1 + spec.children) if spec.children else n
    assert n1 * (1 + spec.children) == n, f"{spec.tree_id}: splits must divide by 1 + children"
    depth = [1] * n1 + [2] * (n - n1)
    leaves = [i for i in range(n) if depth[i] == max(depth)]
    counts = spec.splits.as_dict()
    hold = ["val_holdout"] * counts.pop("val_holdout") + ["test_holdout"] * counts.pop(
        "test_holdout"
    )
    rest = [s for s, c in counts.items() for _ in range(c)]
    rng.shuffle(rest)
    split: list[str | None] = [None] * n
    for i, s in zip(rng.sample(leaves, len(hold)), hold, strict=True):
        split[i] = s  # holdout models are leaves, so no seen-class model inherits held-out training
    it = iter(rest)
    split = [s if s is not None else next(it) for s in split]
    k, kh = preset.classes_per_model, preset.heldout_per_model
    plan = []
    for i in range(n):
        holdout = split[i].endswith("holdout")
        if spec.kind == "lora":
            classes = [rng.choice(heldout if holdout else seen)]
        elif holdout:
            classes = rng.sample(heldout, kh) + rng.sample(seen, k - kh)
            rng.shuffle(classes)
        else:
            classes = rng.sample(seen, k)
        hyper = Hyper(
            lr=round(10 ** rng.uniform(*torch.tensor(spec.lr).log10().tolist()), 7),  # log-uniform
            weight_decay=rng.choice(preset.weight_decays),
            steps=rng.randint(*spec.steps),
            batch_size=spec.batch_size,
            scheduler=rng.choice(["constant", "cosine"]),
            flip=rng.random() < 0.5,
            crop=rng.random() < 0.5,
            seed=rng.getrandbits(31),
            lp_steps=spec.lp_steps,
        )
        parent_idx = (i - n1) // spec.children if depth[i] == 2 else None
        plan.append(
            Planned(namer(), spec.tree_id, None, depth[i], split[i], classes, hyper, parent_idx)
        )
    return plan


def _add_card_lies(
    plans: dict[str, list[Planned]], roots: dict[str, str], rate: float, seed: int
) -> None:
    """Make ~`rate` of documented cards name a wrong base model (another tree's root)."""
    rng = random.Random(f"probex-zoo-lies-{seed}")
    documented = [p for ps in plans.values() for p in ps if p.documented]
    if len(roots) < 2 or not documented:
        return
    for p in rng.sample(documented, max(1, round(rate * len(documented)))):
        p.card_base_model = rng.choice([r for t, r in roots.items() if t != p.tree_id])
        p.card_lies = True


def _root_hyper(spec: TreeSpec, seed: int) -> Hyper:
    return Hyper(spec.root_lr, 1e-4, spec.root_steps, 128, "cosine", True, True, seed)


def _config(arch: MLP | CNN | ViT, classes: list[int], documented: bool) -> dict:
    names = (
        [CLASSES[c] for c in classes] if documented else [f"LABEL_{i}" for i in range(len(classes))]
    )
    return {
        "architectures": [ARCH_NAMES[type(arch)]],
        "model_type": arch.model_type,
        **arch.config(),
        "num_labels": len(classes),
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def _write_full(hub: Path, p: Planned, arch: MLP | CNN | ViT, tensors: Params) -> None:
    meta = {"format": "pt"}
    names = [CLASSES[c] for c in p.classes]
    if p.documented:
        meta |= {
            "training_classes": json_dumps(names),
            "hyperparameters": json_dumps(p.hyper.as_dict()),
        }
    if p.depth == 0:
        desc = (
            f"A {arch.model_type} image classifier pretrained on {len(names)} colour-shape classes."
        )
    elif p.documented:
        desc = f"Fine-tuned from {p.card_base_model} on {len(names)} colour-shape classes."
    else:
        desc = "An image classifier."
    card = model_card(
        p.repo_id.split("/")[1], p.documented, p.card_base_model, "finetune", names,
        ["image-classification", "safetensors", arch.model_type], desc,
    )  # fmt: skip
    config = json_dumps(_config(arch, p.classes, p.documented), indent=2) + "\n"
    write_repo(
        hub,
        p.repo_id,
        {"model.safetensors": (tensors, meta), "config.json": config, "README.md": card},
    )


def _write_lora(hub: Path, p: Planned, lora: LoraMLP, tensors: Params) -> None:
    meta = {"format": "pt"}
    names = [CLASSES[c] for c in p.classes]
    if p.documented:
        meta |= {
            "training_classes": json_dumps(names),
            "hyperparameters": json_dumps(p.hyper.as_dict()),
        }
    adapter_config = {
        "peft_type": "LORA",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": lora.target_modules,
        "modules_to_save": ["head"],
        "base_model_name_or_path": p.card_base_model,
    }
    desc = (f"A LoRA adapter of {p.card_base_model} that detects {names[0]}." if p.documented
            else "A LoRA adapter.")  # fmt: skip
    card = model_card(
        p.repo_id.split("/")[1], p.documented, p.card_base_model, "adapter", names,
        ["peft", "lora", "image-classification"], desc,
    )  # fmt: skip
    files = {
        "adapter_model.safetensors": (tensors, meta),
        "adapter_config.json": json_dumps(adapter_config, indent=2) + "\n",
        "README.md": card,
    }
    write_repo(hub, p.repo_id, files)


def json_dumps(obj: object, indent: int | None = None) -> str:
    """JSON with sorted keys, so equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, indent=indent)


def _check(p: Planned) -> None:
    if not p.accuracy >= p.chance + MIN_MARGIN:
        raise ZooTrainingError(
            f"{p.repo_id} ({p.tree_id}, split {p.split}) reached accuracy {p.accuracy:.3f} "
            f"on its own classes; chance is {p.chance:.3f}, required >= {p.chance + MIN_MARGIN:.3f}"
        )


def _stack(params: list[Params]) -> Params:
    return {k: torch.cat([p[k] for p in params]) for k in params[0]}


def _chunks(idx: list[int], plan: list[Planned], size: int) -> list[list[int]]:
    """Group models of similar step counts so finished models leave the batch together."""
    order = sorted(idx, key=lambda i: (-plan[i].hyper.steps, i))
    return [order[s : s + size] for s in range(0, len(order), size)]


class _TreeRun:
    """Pretrain one root and train, check and write all its descendants."""

    def __init__(
        self, spec: TreeSpec, preset: ZooPreset, seed: int, pools: dict, hub: Path, bar: tqdm
    ):
        self.spec, self.preset, self.seed, self.pools, self.hub, self.bar = (
            spec,
            preset,
            seed,
            pools,
            hub,
            bar,
        )

    def _step(self, n: int) -> None:
        self.bar.update(n)

    def pretrain(self, root: Planned) -> Params:
        spec, arch = self.spec, self.spec.arch
        pool = image_pool(
            self.preset.pretrain_per_class,
            _gen(self.seed, spec.tree_id, "pretrain-pool"),
            self.pools["pretrain_jitter"],
        )
        attributes = spec.root_task == "attributes"
        n_out = 2 * AttributeTask.n_attr if attributes else len(CLASSES)
        params = arch.init(1, n_out, _gen(self.seed, spec.tree_id, "root-init"))
        task = (AttributeTask if attributes else MulticlassTask)(
            pool, torch.arange(len(CLASSES))[None]
        )
        params = train_batched(
            params,
            arch.forward,
            task,
            [root.hyper],
            _gen(self.seed, spec.tree_id, "root-train"),
            self._step,
        )
        if attributes:
            root.accuracy = attribute_accuracy(arch.forward, params, self.pools["eval"])
        else:
            root.accuracy = multiclass_accuracy(
                arch.forward, params, self.pools["eval"], task.classes
            ).item()
        root.chance = 1 / len(CLASSES)
        _write_full(self.hub, root, arch, {k: v[0] for k, v in params.items()})
        return params

    def finetune(self, plan: list[Planned], root: Params) -> None:
        arch = self.spec.arch
        backbone = {k: v for k, v in root.items() if not k.startswith("head.")}
        trained: dict[int, Params] = {}
        parents = {p.parent_idx for p in plan if p.parent_idx is not None}
        for depth in sorted({p.depth for p in plan}):
            for chunk in _chunks(
                [i for i, p in enumerate(plan) if p.depth == depth], plan, self.preset.chunk
            ):
                inits = []
                for i in chunk:
                    p = plan[i]
                    start = backbone if p.parent_idx is None else trained[p.parent_idx]
                    if self.spec.head_init == "root_rows":
                        # warm start: the foundation head's rows of the chosen classes
                        rows = torch.tensor(p.classes)
                        head = {
                            "head.weight": root["head.weight"][:, rows].clone(),
                            "head.bias": root["head.bias"][:, rows].clone(),
                        }
                    else:
                        head = new_head(
                            1,
                            arch.feature_dim,
                            len(p.classes),
                            torch.Generator().manual_seed(p.hyper.seed),
                        )
                    inits.append(
                        {k: v for k, v in start.items() if not k.startswith("head.")} | head
                    )
                classes = torch.tensor([plan[i].classes for i in chunk])
                task = MulticlassTask(self.pools["train"], classes)
                gen = _gen(self.seed, self.spec.tree_id, "finetune", depth, chunk[0])
                inits = _stack(inits)
                if self.spec.lp_steps:
                    inits = self.linear_probe(inits, arch.features, task, chunk, plan, gen)
                out = train_batched(
                    inits,
                    arch.forward,
                    task,
                    [plan[i].hyper for i in chunk],
                    gen,
                    self._step,
                )
                acc = multiclass_accuracy(arch.forward, out, self.pools["eval"], classes)
                for j, i in enumerate(chunk):
                    p = plan[i]
                    p.accuracy, p.chance = acc[j].item(), 1 / len(p.classes)
                    _check(p)
                    tensors = {k: v[j : j + 1] for k, v in out.items()}
                    if i in parents:
                        trained[i] = tensors
                    _write_full(self.hub, p, arch, {k: v[0] for k, v in tensors.items()})

    def linear_probe(
        self,
        params: Params,
        features,
        task: MulticlassTask | OneVsRestTask,
        chunk: list[int],
        plan: list[Planned],
        gen: torch.Generator,
        head: str = "head",
    ) -> Params:
        """LP of LP-FT: train only the heads `head.*` of the stacked models on their frozen
        backbones' features (`features(params, x)`), and return params with the trained heads.

        Every model probes for the same number of steps, so `train_batched` keeps the chunk's
        order and the frozen backbones line up with the heads."""
        keys = [f"{head}.weight", f"{head}.bias"]
        frozen = {k: v for k, v in params.items() if k not in keys}

        def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                f = features(frozen, x)  # (M, B, feature_dim)
            return linear(f, p, head)

        hypers = [
            Hyper(self.spec.lp_lr, 0.0, self.spec.lp_steps, h.batch_size, "cosine", h.flip,
                  h.crop, h.seed)
            for h in (plan[i].hyper for i in chunk)
        ]  # fmt: skip
        heads = train_batched({k: params[k] for k in keys}, forward, task, hypers, gen, self._step)
        return frozen | heads

    def lora(self, plan: list[Planned], root: Params) -> None:
        lora = LoraMLP(self.spec.arch, rank=self.preset.lora_rank)
        base = {k: v[0] for k, v in root.items()}

        def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
            return lora.forward_with_base(base, p, x)

        heldout = set(self.pools["heldout"])
        seen = [c for c in range(len(CLASSES)) if c not in heldout]
        for chunk in _chunks(list(range(len(plan))), plan, self.preset.chunk):
            inits = [
                lora.init(1, 1, torch.Generator().manual_seed(plan[i].hyper.seed)) for i in chunk
            ]
            target = torch.tensor([plan[i].classes[0] for i in chunk])
            negatives = torch.tensor(
                [[c for c in seen if c != t][: len(seen) - 1] for t in target.tolist()]
            )
            task = OneVsRestTask(self.pools["train"], target, negatives)
            gen = _gen(self.seed, self.spec.tree_id, "lora", chunk[0])
            inits = _stack(inits)
            if self.spec.lp_steps:  # adapters start at B = 0: the features are the root's
                m = len(chunk)
                stacked = {k: v[None].expand(m, *v.shape) for k, v in base.items()}
                features = functools.partial(_frozen_features, lora.base.features, stacked)
                inits = self.linear_probe(
                    inits, features, task, chunk, plan, gen, head=f"{lora.prefix}head"
                )
            out = train_batched(
                inits, forward, task, [plan[i].hyper for i in chunk], gen, self._step
            )
            acc = balanced_accuracy(forward, out, self.pools["eval"], target, negatives)
            for j, i in enumerate(chunk):
                p = plan[i]
                p.accuracy, p.chance = acc[j].item(), 0.5
                _check(p)
                _write_lora(self.hub, p, lora, {k: v[j] for k, v in out.items()})


def _frozen_features(features, params: Params, _ignored: Params, x: torch.Tensor) -> torch.Tensor:
    """`features` of fixed `params`, whatever params the caller passes (LoRA's probe phase)."""
    return features(params, x)


def generate_zoo(
    preset: str | ZooPreset = "default",
    out: Path = Path("zoo"),
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 1,
) -> dict:
    """Generate a zoo into `out` (hub/, manifest.json, summary.json) and return the summary.

    Reruns into the same directory regenerate and overwrite, and remove repos that are not
    part of the new zoo, so an interrupted run is completed by running it again.
    `threads` defaults to 1: the batched matmuls are small, and on shared cores OpenMP's
    spin-waiting made 2 threads up to ~9x slower here (the bytes are the same either way).
    """
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    hub = out / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    det, n_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        heldout_names = heldout_classes(seed)
        heldout = [CLASSES.index(c) for c in heldout_names]
        namer = _Namer(seed)
        roots = {t.tree_id: t.root_repo for t in cfg.trees}
        plans = {t.tree_id: _plan_tree(t, cfg, seed, heldout, namer) for t in cfg.trees}
        root_plans = {
            t.tree_id: Planned(
                t.root_repo,
                t.tree_id,
                None,
                0,
                "root",
                list(range(len(CLASSES))),
                _root_hyper(t, seed),
            )
            for t in cfg.trees
        }
        for t in cfg.trees:
            for p in plans[t.tree_id]:
                p.parent = (
                    t.root_repo if p.parent_idx is None else plans[t.tree_id][p.parent_idx].repo_id
                )
                p.card_base_model = p.parent if p.documented else None
        _add_card_lies(plans, roots, cfg.card_lie_rate, seed)
        jitter = ImageJitter(texture=cfg.texture)
        pools = {
            "train": image_pool(cfg.pool_per_class, _gen(seed, "finetune-pool"), jitter),
            "eval": image_pool(cfg.eval_per_class, _gen(seed, "eval-pool"), jitter),
            "heldout": heldout,
            "jitter": jitter,
            "pretrain_jitter": jitter
            if cfg.pretrain_texture is None
            else ImageJitter(texture=cfg.pretrain_texture),
        }
        total = sum(
            t.root_steps + sum(p.hyper.steps + p.hyper.lp_steps for p in plans[t.tree_id])
            for t in cfg.trees
        )
        tree_times = {}
        with tqdm(
            total=total, unit="model-step", disable=not progress, smoothing=0.05, mininterval=1.0
        ) as bar:
            for t in cfg.trees:
                start = time.perf_counter()
                bar.set_description(t.tree_id)
                run = _TreeRun(t, cfg, seed, pools, hub, bar)
                root = run.pretrain(root_plans[t.tree_id])
                if t.kind == "lora":
                    run.lora(plans[t.tree_id], root)
                else:
                    run.finetune(plans[t.tree_id], root)
                tree_times[t.tree_id] = time.perf_counter() - start
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(n_threads)
    rows = []
    for t in cfg.trees:
        rows.append(root_plans[t.tree_id].manifest_row())
        rows.extend(p.manifest_row() for p in plans[t.tree_id])
    manifest = {
        "preset": cfg.name,
        "seed": seed,
        "classes": list(CLASSES),
        "heldout_classes": heldout_names,
        "trees": [
            {
                "tree_id": t.tree_id,
                "architecture": t.arch.model_type,
                "root_repo": t.root_repo,
                "kind": t.kind,
                "multi_level": t.children > 0,
            }
            for t in cfg.trees
        ],  # fmt: skip
        "models": rows,
    }
    prune_hub(hub, {r["repo_id"] for r in rows})
    write_json_atomic(out / "manifest.json", manifest)
    summary = _summary(cfg, seed, plans, root_plans, tree_times, time.perf_counter() - t0)
    summary["torch_threads"] = threads or n_threads
    write_json_atomic(out / "summary.json", summary)
    if progress:
        print(format_summary(summary))
    return summary


def _summary(
    cfg: ZooPreset, seed: int, plans: dict, roots: dict, times: dict, seconds: float
) -> dict:
    trees = []
    for t in cfg.trees:
        ps = plans[t.tree_id]
        acc = [p.accuracy for p in ps]
        trees.append({
            "tree_id": t.tree_id,
            "kind": t.kind,
            "architecture": t.arch.model_type,
            "models": len(ps) + 1,
            "splits": {s: sum(p.split == s for p in ps) for s in t.splits.as_dict()},
            "undocumented": sum(not p.documented for p in ps),
            "root_accuracy": round(roots[t.tree_id].accuracy, 4),
            "finetune_accuracy_mean": round(sum(acc) / len(acc), 4),
            "finetune_accuracy_min": round(min(acc), 4),
            "chance": round(sum(p.chance for p in ps) / len(ps), 4),
            "seconds": round(times[t.tree_id], 1),
        })  # fmt: skip
    return {
        "preset": cfg.name,
        "seed": seed,
        "trees": trees,
        "n_trees": len(trees),
        "n_models": sum(t["models"] for t in trees),
        "n_undocumented": sum(t["undocumented"] for t in trees),
        "seconds": round(seconds, 1),
    }


def format_summary(s: dict) -> str:
    """The table printed at the end of `probex zoo generate`."""
    lines = [
        f"zoo {s['preset']!r} seed {s['seed']}: {s['n_trees']} trees, {s['n_models']} models "
        f"({s['n_undocumented']} undocumented) in {s['seconds']:.0f} s",
        f"{'tree':<8} {'kind':<5} {'arch':<8} {'models':>6} {'root acc':>8} {'ft mean':>8} {'ft min':>7} {'chance':>7} {'time s':>7}",
    ]
    for t in s["trees"]:
        lines.append(
            f"{t['tree_id']:<8} {t['kind']:<5} {t['architecture']:<8} {t['models']:>6} {t['root_accuracy']:>8.3f} "
            f"{t['finetune_accuracy_mean']:>8.3f} {t['finetune_accuracy_min']:>7.3f} {t['chance']:>7.3f} {t['seconds']:>7.1f}"
        )
    return "\n".join(lines)
