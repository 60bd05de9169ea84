"""The built-in zoo: hub layout, card contract, honest ground truth, learning, determinism."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from bench.zoo import _Setup
from probex_core.zoo import PRESETS, ZooTrainingError, generate_zoo
from probex_core.zoo.archs import MLP
from probex_core.zoo.data import CLASSES, COLOURS, SHAPES, heldout_classes, image_pool
from probex_core.zoo.parallel import map_trees
from probex_core.zoo.plan import MIN_MARGIN
from probex_core.zoo.trainer import Hyper, MulticlassTask, multiclass_accuracy, train_batched
from probex_core.zoo.writer import save_safetensors


def _manifest(zoo: Path) -> dict:
    return json.loads((zoo / "manifest.json").read_text())


def _weights_file(repo: Path) -> Path:
    lora = repo / "adapter_model.safetensors"
    return lora if lora.exists() else repo / "model.safetensors"


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def test_tiny_preset_shape(tiny_zoo: Path) -> None:
    m = _manifest(tiny_zoo)
    trees = {t["tree_id"]: t for t in m["trees"]}
    assert len(trees) >= 3
    assert any(t["kind"] == "lora" for t in trees.values())
    assert any(t["multi_level"] for t in trees.values())
    per_tree_train = {
        tid: sum(r["tree_id"] == tid and r["split"] == "train" for r in m["models"])
        for tid in trees
    }
    assert max(per_tree_train[t] for t in trees if trees[t]["kind"] == "full") >= 96
    multi = [t for t in trees.values() if t["multi_level"]][0]["tree_id"]
    assert max(r["depth"] for r in m["models"] if r["tree_id"] == multi) == 2
    assert len(m["classes"]) == 100 and len(set(m["classes"])) == 100


def test_every_repo_round_trips(tiny_zoo: Path) -> None:
    m = _manifest(tiny_zoo)
    hub = tiny_zoo / "hub"
    on_disk = {f"{o.name}/{r.name}" for o in hub.iterdir() for r in o.iterdir()}
    assert on_disk == {r["repo_id"] for r in m["models"]}
    for row in m["models"]:
        repo = hub / row["repo_id"]
        card = ModelCard.load(repo / "README.md")
        tensors, meta = _read(_weights_file(repo))
        assert meta.get("format") == "pt"
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
        base = card.data.to_dict().get("base_model")
        if row["documented"]:
            assert json.loads(meta["training_classes"]) == row["training_classes"]
            assert json.loads(meta["hyperparameters"]) == row["hyperparameters"]
            assert card.data.to_dict()["training_classes"] == row["training_classes"]
            assert base == row["card_base_model"]
            if row["split"] != "root":
                assert base is not None
                assert (base != row["parent"]) == row["card_lies"]
        else:
            assert base is None and card.data.to_dict() == {}
            assert "training_classes" not in meta and "hyperparameters" not in meta
            for name in repo.iterdir():
                text = name.read_text() if name.suffix in {".json", ".md"} else ""
                assert not any(c in text for c in row["training_classes"]), name


def test_undocumented_share_is_about_a_fifth(tiny_zoo: Path) -> None:
    rows = _manifest(tiny_zoo)["models"]
    share = sum(not r["documented"] for r in rows) / len(rows)
    assert 0.12 < share < 0.3
    assert {r["split"] for r in rows if not r["documented"]} == {
        "test",
        "val_holdout",
        "test_holdout",
    }
    assert any(r["card_lies"] for r in rows)


def test_finetunes_beat_chance(tiny_zoo: Path) -> None:
    for row in _manifest(tiny_zoo)["models"]:
        assert row["accuracy"] >= row["chance"] + MIN_MARGIN, row["repo_id"]


def test_heldout_classes_never_in_seen_splits(tiny_zoo: Path) -> None:
    m = _manifest(tiny_zoo)
    held = set(m["heldout_classes"])
    assert held and len(held) == 20
    for row in m["models"]:
        overlap = held & set(row["training_classes"])
        if row["split"] in {"train", "val", "test"}:
            assert not overlap, row["repo_id"]
        elif row["split"].endswith("holdout"):
            assert overlap, row["repo_id"]


def test_heldout_names_share_words_with_seen() -> None:
    held = set(heldout_classes(0))
    seen = [c for c in CLASSES if c not in held]
    assert {c.split()[0] for c in seen} == set(COLOURS)
    assert {c.split()[1] for c in seen} == set(SHAPES)


def test_repo_ids_do_not_leak_the_tree(tiny_zoo: Path) -> None:
    m = _manifest(tiny_zoo)
    for row in m["models"]:
        if row["split"] != "root":
            assert not any(t["tree_id"] in row["repo_id"] for t in m["trees"])


def test_lora_repos_have_peft_layout(tiny_zoo: Path) -> None:
    m = _manifest(tiny_zoo)
    lora_trees = {t["tree_id"] for t in m["trees"] if t["kind"] == "lora"}
    rows = [r for r in m["models"] if r["tree_id"] in lora_trees and r["split"] != "root"]
    assert rows
    for row in rows:
        repo = tiny_zoo / "hub" / row["repo_id"]
        cfg = json.loads((repo / "adapter_config.json").read_text())
        assert (
            cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == row["card_base_model"]
        )
        root_repo = (
            tiny_zoo
            / "hub"
            / m["trees"][[t["tree_id"] for t in m["trees"]].index(row["tree_id"])]["root_repo"]
        )
        root, _ = _read(root_repo / "model.safetensors")
        tensors, _ = _read(repo / "adapter_model.safetensors")
        r = cfg["r"]
        for mod in cfg["target_modules"]:
            d_out, d_in = root[f"{mod}.weight"].shape
            assert tensors[f"base_model.model.{mod}.lora_A.weight"].shape == (r, d_in)
            assert tensors[f"base_model.model.{mod}.lora_B.weight"].shape == (d_out, r)
            assert tensors[f"base_model.model.{mod}.lora_B.weight"].abs().sum() > 0
        assert len(row["training_classes"]) == 1 and row["chance"] == 0.5


def test_finetunes_move_away_from_their_parent(tiny_zoo: Path) -> None:
    m = _manifest(tiny_zoo)
    hub = tiny_zoo / "hub"
    roots = {t["root_repo"] for t in m["trees"] if t["kind"] == "full"}
    root_of = {t["tree_id"]: t["root_repo"] for t in m["trees"]}
    m_root = {r["repo_id"]: root_of[r["tree_id"]] for r in m["models"]}
    for row in [
        r
        for r in m["models"]
        if r["depth"] >= 1 and (hub / r["repo_id"] / "model.safetensors").exists()
    ][:10]:
        child, _ = _read(hub / row["repo_id"] / "model.safetensors")
        parent, _ = _read(hub / row["parent"] / "model.safetensors")
        c, p = child["fc1.weight"], parent["fc1.weight"]
        assert not torch.equal(c, p)
        # a fine-tune, not a new network: it moved (measured 0.10-0.50 of the parent's norm
        # on mlp-a) but stays far nearer its parent than the other MLP tree's root (≈ 1.75)
        change = ((c - p).norm() / p.norm()).item()
        assert 0.01 < change < 0.8, (row["repo_id"], change)
        for other in roots - {m_root[row["repo_id"]]}:
            o, _ = _read(hub / other / "model.safetensors")
            if o["fc1.weight"].shape == c.shape:
                assert (c - o["fc1.weight"]).norm() > 2 * (c - p).norm(), (row["repo_id"], other)


def test_save_safetensors_is_byte_stable(tmp_path: Path) -> None:
    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(4)}
    meta = {"z": "1", "format": "pt", "training_classes": json.dumps(["red star"])}
    save_safetensors(tmp_path / "x.safetensors", tensors, meta)
    save_safetensors(
        tmp_path / "y.safetensors", dict(reversed(tensors.items())), dict(reversed(meta.items()))
    )
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    back, back_meta = _read(tmp_path / "x.safetensors")
    assert back_meta == meta and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_trainer_learns_planted_classes_and_not_shuffled_labels() -> None:
    """The batched trainer learns real labels; a model given random labels stays at chance."""
    gen = torch.Generator().manual_seed(0)
    pool, ev = image_pool(30, gen), image_pool(6, gen)
    classes = torch.tensor([[0, 11, 22, 33, 44], [0, 11, 22, 33, 44]])
    arch = MLP(hidden=(32, 16))
    hyper = Hyper(3e-3, 0.0, 150, 32, "constant", False, False, 0)
    perm = torch.randperm(pool.shape[0] * pool.shape[1], generator=gen)
    shuffled = pool.flatten(0, 1)[perm].view_as(pool)  # labels no longer match images
    params = arch.init(1, 5, gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread avoids OpenMP spin-waits on shared cores
    try:
        real = train_batched(params, arch.forward, MulticlassTask(pool, classes[:1]), [hyper], gen)
        fake = train_batched(
            params, arch.forward, MulticlassTask(shuffled, classes[:1]), [hyper], gen
        )
    finally:
        torch.set_num_threads(threads)
    acc_real = multiclass_accuracy(arch.forward, real, ev, classes[:1]).item()
    acc_fake = multiclass_accuracy(arch.forward, fake, ev, classes[:1]).item()
    assert acc_real > 0.6 and acc_fake < 0.45


class _RecordingTask(MulticlassTask):
    """Remembers which models each step drew targets for, and the targets."""

    def __init__(self, pool: torch.Tensor, classes: torch.Tensor):
        super().__init__(pool, classes)
        self.draws: list[tuple[list[int], torch.Tensor]] = []

    def batch(
        self, idx: torch.Tensor, b: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cls, y = super().batch(idx, b, gen)
        self.draws.append((idx.tolist(), y))
        return cls, y


def _torch_adamw(
    arch: MLP, start: dict[str, torch.Tensor], h: Hyper, batches: list[tuple]
) -> dict[str, torch.Tensor]:
    """One model trained by torch.optim.AdamW and a LambdaLR schedule on the given batches."""
    p = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    opt = torch.optim.AdamW(p.values(), lr=h.lr, weight_decay=h.weight_decay)
    cosine = h.scheduler == "cosine"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / h.steps)) if cosine else 1.0
    )
    for x, y in batches:
        opt.zero_grad()
        MulticlassTask.loss(arch.forward(p, x), y).sum().backward()
        opt.step()
        sched.step()
    return {k: v.detach() for k, v in p.items()}


def test_batched_training_is_torch_adamw_per_model() -> None:
    """Each stacked model ends where torch.optim.AdamW takes it alone on the same batches.

    Covers per-model lr, weight decay and schedule, models that stop early and models
    passed out of step order (the trainer reorders them internally and back).
    """
    gen = torch.Generator().manual_seed(0)
    pool = image_pool(4, gen)
    arch = MLP(hidden=(16, 8))
    hypers = [
        Hyper(5e-3, 1e-1, 4, 8, "cosine", True, False, 0),
        Hyper(3e-3, 1e-2, 9, 8, "cosine", True, True, 1),
        Hyper(1e-2, 0.0, 6, 8, "constant", False, True, 2),
        Hyper(2e-3, 1e-3, 9, 8, "constant", False, False, 3),
    ]
    params = arch.init(len(hypers), 5, gen)
    classes = torch.stack([torch.randperm(100, generator=gen)[:5] for _ in hypers])
    task = _RecordingTask(pool, classes)
    images: list[torch.Tensor] = []

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        images.append(x)
        return arch.forward(p, x)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids OpenMP spin-waits on shared cores
    try:
        out = train_batched(params, forward, task, hypers, gen)
    finally:
        torch.set_num_threads(threads)
    for j, h in enumerate(hypers):
        batches = [
            (x[r : r + 1], y[r : r + 1])
            for x, (idx, y) in zip(images, task.draws, strict=True)
            if j in idx
            for r in [idx.index(j)]
        ]
        assert len(batches) == h.steps
        ref = _torch_adamw(arch, {k: v[j : j + 1] for k, v in params.items()}, h, batches)
        for k, v in ref.items():
            assert (out[k][j] - v[0]).abs().max() < 1e-6, (j, k)
            assert not torch.equal(out[k][j], params[k][j]), (j, k)


@pytest.mark.parametrize("kind", ["mlp", "vit", "cnn", "lora"])
def test_bench_baseline_modules_compute_the_zoo_forward(kind: str) -> None:
    """`probex bench zoo` times torch.nn modules that are the same functions as archs.py's."""
    gen = torch.Generator().manual_seed(0)
    assert _Setup(kind, 2, 2, gen).check_module(gen) < 1e-4


def _files(zoo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(zoo)): p.read_bytes()
        for p in sorted((zoo / "hub").rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    """Generates the micro preset (both tree shapes, real code path) three times: the first
    with its two trees side by side in two processes, the others one after another here.

    The second run goes into a directory holding a stale repo, which a rerun must remove.
    """
    stale = tmp_path / "b" / "hub" / "someone" / "model-stale"
    stale.mkdir(parents=True)
    (stale / "README.md").write_text("# stale\n")
    a = generate_zoo(PRESETS["micro"], tmp_path / "a", seed=0, progress=False, workers=2)
    generate_zoo(PRESETS["micro"], tmp_path / "b", seed=0, progress=False, workers=1)
    generate_zoo(PRESETS["micro"], tmp_path / "c", seed=1, progress=False, workers=1)
    assert a["processes"] == 2
    assert not stale.exists() and not list((tmp_path / "b" / "hub").rglob(".*tmp*"))
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa == fb and a["n_models"] == len(_manifest(tmp_path / "a")["models"])
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "b")
    ma, mc = _manifest(tmp_path / "a"), _manifest(tmp_path / "c")
    for tree in ma["trees"]:
        root = tree["root_repo"]
        wa, _ = _read(tmp_path / "a" / "hub" / root / "model.safetensors")
        wc, _ = _read(tmp_path / "c" / "hub" / root / "model.safetensors")
        assert not torch.equal(wa["fc1.weight"], wc["fc1.weight"])
    assert {r["repo_id"] for r in ma["models"]} != {r["repo_id"] for r in mc["models"]}


def test_a_finetunes_recorded_accuracy_is_what_its_saved_weights_score(tiny_zoo: Path) -> None:
    """Not the generator's own number read back: the weights as written to the hub, scored
    again on the eval pool rebuilt from the seed, give the manifest's accuracy."""
    from safetensors.torch import load_file

    from probex_core.zoo.data import CLASSES, ImageJitter, image_pool
    from probex_core.zoo.plan import seeded_generator
    from probex_core.zoo.presets import TINY
    from probex_core.zoo.trainer import multiclass_accuracy

    manifest = _manifest(tiny_zoo)
    spec = next(t for t in TINY.trees if t.tree_id == "mlp-a")
    pool = image_pool(
        TINY.eval_per_class,
        seeded_generator(manifest["seed"], "eval-pool"),
        ImageJitter(texture=TINY.texture),
    )
    rows = [r for r in manifest["models"] if r["tree_id"] == "mlp-a" and r["depth"] == 1][:3]
    for row in rows:
        weights = load_file(str(tiny_zoo / "hub" / row["repo_id"] / "model.safetensors"))
        params = {k: v[None] for k, v in weights.items()}  # one model in the batch axis
        classes = torch.tensor([[CLASSES.index(c) for c in row["training_classes"]]])
        acc = multiclass_accuracy(spec.arch.forward, params, pool, classes).item()
        assert acc == pytest.approx(row["accuracy"], abs=1e-6), row["repo_id"]
        assert acc >= row["chance"] + MIN_MARGIN


@pytest.mark.slow
def test_a_tree_with_its_own_texture_draws_its_own_images_and_leaves_the_others(
    tmp_path: Path,
) -> None:
    """The micro preset as is, and with its LoRA tree on patterned images of its own: the
    other tree's repos are the same bytes; each adapter as written scores its recorded
    accuracy on the eval pool drawn from its tree's own generator and texture, and scores
    otherwise on the preset's flat pool."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from probex_core.zoo.archs import LoraMLP
    from probex_core.zoo.data import ImageJitter
    from probex_core.zoo.plan import seeded_generator
    from probex_core.zoo.trainer import balanced_accuracy

    micro = PRESETS["micro"]
    assert micro.texture == 0.0 and all(t.texture is None for t in micro.trees)
    spec = replace(next(t for t in micro.trees if t.kind == "lora"), texture=2.0)
    own = replace(micro, trees=tuple(spec if t.kind == "lora" else t for t in micro.trees))
    generate_zoo(micro, tmp_path / "a", seed=0, progress=False, workers=1)
    generate_zoo(own, tmp_path / "b", seed=0, progress=False, workers=1)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa.keys() == fb.keys()
    manifest = _manifest(tmp_path / "b")
    rows = [r for r in manifest["models"] if r["tree_id"] == "lora" and r["depth"] > 0]
    adapters = {f"hub/{r['repo_id']}/adapter_model.safetensors" for r in rows}
    others = {f"hub/{r['repo_id']}/" for r in manifest["models"] if r["tree_id"] != "lora"}
    assert rows and others and adapters <= fa.keys()
    assert all(fa[f] == fb[f] for f in fa if any(f.startswith(r) for r in others))
    assert all(fa[f] != fb[f] for f in adapters)

    lora = LoraMLP(spec.arch, rank=micro.lora_rank)
    base = load_file(str(tmp_path / "b" / "hub" / spec.root_repo / "model.safetensors"))
    weights = [load_file(str(tmp_path / "b" / f"hub/{r['repo_id']}/adapter_model.safetensors"))
               for r in rows]  # fmt: skip
    params = {k: torch.stack([w[k] for w in weights]) for k in weights[0]}
    heldout = {CLASSES.index(c) for c in manifest["heldout_classes"]}
    target = torch.tensor([CLASSES.index(r["training_classes"][0]) for r in rows])
    # negatives: every seen class but the adapter's own (the first 79 of 80 for a held-out one)
    seen = [c for c in range(len(CLASSES)) if c not in heldout]
    negatives = torch.tensor([[c for c in seen if c != t][:79] for t in target.tolist()])

    def scores(texture: float, *tags: str) -> torch.Tensor:
        gen = seeded_generator(manifest["seed"], *tags, "eval-pool")
        pool = image_pool(micro.eval_per_class, gen, ImageJitter(texture=texture))
        forward = lambda p, x: lora.forward_with_base(base, p, x)  # noqa: E731
        return balanced_accuracy(forward, params, pool, target, negatives)

    mine = scores(spec.texture, spec.tree_id)
    assert mine.tolist() == pytest.approx([r["accuracy"] for r in rows], abs=1e-6)
    assert (mine >= 0.5 + MIN_MARGIN).all()
    assert not torch.allclose(scores(micro.texture), mine)


class _Bar:
    """What `map_trees` needs of a tqdm bar (a disabled tqdm does not count)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def _steps_job(n: int, step) -> int:
    """A job for `map_trees`: takes `n` steps one at a time; a negative `n` fails."""
    if n < 0:
        raise ZooTrainingError(f"job {n} did not learn")
    for _ in range(n):
        step(1)
    return n * n


@pytest.mark.parametrize("workers", [1, 2])
def test_trees_side_by_side_return_in_order_count_every_step_and_raise_a_failure(
    workers: int,
) -> None:
    bar = _Bar()
    assert map_trees(_steps_job, [(3,), (50,), (7,)], workers, 1, bar) == [9, 2500, 49]
    assert bar.n == 60
    with pytest.raises(ZooTrainingError, match="job -1 did not learn"):
        map_trees(_steps_job, [(5,), (-1,), (6,)], workers, 1, _Bar())


def _wait_job(pids: str, step) -> None:
    """A job for `map_trees` that records its process and outlives any test: 10 minutes."""
    (Path(pids) / str(os.getpid())).touch()
    time.sleep(600)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_generator_takes_its_tree_processes_with_it(tmp_path: Path) -> None:
    """SIGKILL the process running `map_trees`: its two workers, each in a 10-minute job,
    end on their own instead of training on for nobody."""
    script = (
        "from probex_core.zoo.parallel import map_trees\n"
        "from tests.test_zoo import _Bar, _wait_job\n"
        f"map_trees(_wait_job, [({str(tmp_path)!r},)] * 2, 2, 1, _Bar())\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        for _ in range(600):  # the workers start: spawned, importing torch
            if len(list(tmp_path.iterdir())) == 2 or proc.poll() is not None:
                break
            time.sleep(0.1)
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert len(workers) == 2 and all(_running(w) for w in workers)
    finally:
        proc.kill()
        proc.wait()
    for _ in range(300):
        if not any(_running(w) for w in workers):
            break
        time.sleep(0.1)
    survivors = [w for w in workers if _running(w)]
    for w in survivors:  # a failure leaves no 10-minute orphans behind
        os.kill(w, signal.SIGKILL)
    assert not survivors
