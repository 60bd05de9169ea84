"""`generate_zoo`: pretrain roots, fine-tune their descendants in batches, write a local hub.

Everything random is derived from the seed (torch generators for weights and images,
`random.Random` for plans and names), so one seed gives one zoo, byte for byte.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from probex_core.zoo.archs import LoraMLP, Params, linear, new_head
from probex_core.zoo.data import CLASSES, ImageJitter, heldout_classes, image_pool
from probex_core.zoo.parallel import map_trees, usable_cores
from probex_core.zoo.plan import (
    MIN_MARGIN,
    Namer,
    Planned,
    ZooTrainingError,
    add_card_lies,
    plan_tree,
    root_hyper,
    seeded_generator,
)
from probex_core.zoo.presets import PRESETS, TreeSpec, ZooPreset
from probex_core.zoo.repos import write_full_repo, write_lora_repo
from probex_core.zoo.summary import format_summary, summarise
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
from probex_core.zoo.writer import prune_hub, write_json_atomic


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
        self,
        spec: TreeSpec,
        preset: ZooPreset,
        seed: int,
        pools: dict,
        hub: Path,
        step: Callable[[int], None],
    ):
        self.spec, self.preset, self.seed, self.pools, self.hub = spec, preset, seed, pools, hub
        self._step = step  # told the model-steps as they are taken

    def pretrain(self, root: Planned) -> Params:
        spec, arch = self.spec, self.spec.arch
        pool = image_pool(
            self.preset.pretrain_per_class,
            seeded_generator(self.seed, spec.tree_id, "pretrain-pool"),
            self.pools["pretrain_jitter"],
        )
        attributes = spec.root_task == "attributes"
        n_out = 2 * AttributeTask.n_attr if attributes else len(CLASSES)
        params = arch.init(1, n_out, seeded_generator(self.seed, spec.tree_id, "root-init"))
        task = (AttributeTask if attributes else MulticlassTask)(
            pool, torch.arange(len(CLASSES))[None]
        )
        params = train_batched(
            params,
            arch.forward,
            task,
            [root.hyper],
            seeded_generator(self.seed, spec.tree_id, "root-train"),
            self._step,
        )
        if attributes:
            root.accuracy = attribute_accuracy(arch.forward, params, self.pools["eval"])
        else:
            root.accuracy = multiclass_accuracy(
                arch.forward, params, self.pools["eval"], task.classes
            ).item()
        root.chance = 1 / len(CLASSES)
        write_full_repo(self.hub, root, arch, {k: v[0] for k, v in params.items()})
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
                gen = seeded_generator(self.seed, self.spec.tree_id, "finetune", depth, chunk[0])
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
                    write_full_repo(self.hub, p, arch, {k: v[0] for k, v in tensors.items()})

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
            gen = seeded_generator(self.seed, self.spec.tree_id, "lora", chunk[0])
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
                write_lora_repo(self.hub, p, lora, {k: v[j] for k, v in out.items()})


def _frozen_features(features, params: Params, _ignored: Params, x: torch.Tensor) -> torch.Tensor:
    """`features` of fixed `params`, whatever params the caller passes (LoRA's probe phase)."""
    return features(params, x)


def generate_zoo(
    preset: str | ZooPreset = "default",
    out: Path = Path("zoo"),
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 1,
    workers: int | None = None,
) -> dict:
    """Generate a zoo into `out` (hub/, manifest.json, summary.json) and return the summary.

    Reruns into the same directory regenerate and overwrite, and remove repos that are not
    part of the new zoo, so an interrupted run is completed by running it again.
    `threads` defaults to 1: the batched matmuls are small, and on shared cores OpenMP's
    spin-waiting made 2 threads up to ~9x slower here (the bytes are the same either way).
    `workers` processes train trees side by side (default: one per usable core; 1 trains
    them here, one after another); the bytes are the same either way.
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
        root_plans, plans = _plan(cfg, seed, heldout)
        pools = _pools(cfg, seed, heldout)
        workers = min(max(usable_cores() if workers is None else workers, 1), len(cfg.trees))
        tree_times = _train_trees(
            cfg, seed, pools, hub, root_plans, plans, progress, workers, threads or n_threads
        )
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(n_threads)
    manifest = _manifest(cfg, seed, heldout_names, root_plans, plans)
    prune_hub(hub, {r["repo_id"] for r in manifest["models"]})
    write_json_atomic(out / "manifest.json", manifest)
    summary = summarise(cfg, seed, plans, root_plans, tree_times, time.perf_counter() - t0)
    summary["torch_threads"] = threads or n_threads
    summary["processes"] = workers
    write_json_atomic(out / "summary.json", summary)
    if progress:
        print(format_summary(summary))
    return summary


def _plan(
    cfg: ZooPreset, seed: int, heldout: list[int]
) -> tuple[dict[str, Planned], dict[str, list[Planned]]]:
    """Every tree's root and fine-tunes, with parents, card claims and card lies."""
    namer = Namer(seed)
    roots = {t.tree_id: t.root_repo for t in cfg.trees}
    plans = {t.tree_id: plan_tree(t, cfg, seed, heldout, namer) for t in cfg.trees}
    root_plans = {
        t.tree_id: Planned(
            t.root_repo, t.tree_id, None, 0, "root", list(range(len(CLASSES))), root_hyper(t, seed)
        )
        for t in cfg.trees
    }
    for t in cfg.trees:
        for p in plans[t.tree_id]:
            p.parent = (
                t.root_repo if p.parent_idx is None else plans[t.tree_id][p.parent_idx].repo_id
            )
            p.card_base_model = p.parent if p.documented else None
    add_card_lies(plans, roots, cfg.card_lie_rate, seed)
    return root_plans, plans


def _pools(cfg: ZooPreset, seed: int, heldout: list[int], tree: TreeSpec | None = None) -> dict:
    """The image pools fine-tunes train and are scored on, and the jitters that draw them:
    the preset's, or those of a `tree` with its own texture (drawn from its own generators)."""
    own = tree is not None and tree.texture is not None
    jitter = ImageJitter(texture=tree.texture if own else cfg.texture)
    tag = (tree.tree_id,) if own else ()
    return {
        "train": image_pool(
            cfg.pool_per_class, seeded_generator(seed, *tag, "finetune-pool"), jitter
        ),
        "eval": image_pool(cfg.eval_per_class, seeded_generator(seed, *tag, "eval-pool"), jitter),
        "heldout": heldout,
        "pretrain_jitter": jitter
        if cfg.pretrain_texture is None
        else ImageJitter(texture=cfg.pretrain_texture),
    }


def _train_trees(
    cfg, seed, pools, hub, root_plans, plans, progress: bool, workers: int, threads: int
) -> dict[str, float]:
    """Every tree trained (see `_train_tree`), in `workers` processes; seconds per tree. The
    roots and plans come back with their accuracies (from another process: as copies)."""
    total = sum(
        t.root_steps + sum(p.hyper.steps + p.hyper.lp_steps for p in plans[t.tree_id])
        for t in cfg.trees
    )
    jobs = [(t, cfg, seed, pools, hub, root_plans[t.tree_id], plans[t.tree_id]) for t in cfg.trees]
    with tqdm(
        total=total, unit="model-step", disable=not progress, smoothing=0.05, mininterval=1.0
    ) as bar:
        bar.set_description(f"{len(jobs)} trees, {workers} process{'es' * (workers > 1)}")
        results = map_trees(_train_tree, jobs, workers, threads, bar)
    tree_times = {}
    for t, (root, plan, seconds) in zip(cfg.trees, results, strict=True):
        root_plans[t.tree_id], plans[t.tree_id] = root, plan
        tree_times[t.tree_id] = seconds
    return tree_times


def _train_tree(
    spec: TreeSpec,
    cfg: ZooPreset,
    seed: int,
    pools: dict,
    hub: Path,
    root: Planned,
    plan: list[Planned],
    step: Callable[[int], None],
) -> tuple[Planned, list[Planned], float]:
    """Pretrain one root, then fine-tune (or adapt) its descendants and write them to the hub:
    the root and plan with their accuracies, and the seconds it took."""
    start = time.perf_counter()
    own = pools if spec.texture is None else _pools(cfg, seed, pools["heldout"], spec)
    run = _TreeRun(spec, cfg, seed, own, hub, step)
    params = run.pretrain(root)
    if spec.kind == "lora":
        run.lora(plan, params)
    else:
        run.finetune(plan, params)
    return root, plan, time.perf_counter() - start


def _manifest(cfg: ZooPreset, seed: int, heldout_names, root_plans, plans) -> dict:
    """The ground truth, kept outside the hub: trees, and every model's row."""
    rows = []
    for t in cfg.trees:
        rows.append(root_plans[t.tree_id].manifest_row())
        rows.extend(p.manifest_row() for p in plans[t.tree_id])
    trees = [
        {
            "tree_id": t.tree_id,
            "architecture": t.arch.model_type,
            "root_repo": t.root_repo,
            "kind": t.kind,
            "multi_level": t.children > 0,
        }
        for t in cfg.trees
    ]
    return {
        "preset": cfg.name,
        "seed": seed,
        "classes": list(CLASSES),
        "heldout_classes": heldout_names,
        "trees": trees,
        "models": rows,
    }
