"""Zoo presets: which trees to grow, how big, and how each model is trained."""

from __future__ import annotations

from dataclasses import dataclass, field

from probex_core.zoo.archs import CNN, MLP, ViT


@dataclass(frozen=True)
class Splits:
    """Descendants per split. train/val are documented; test and the holdout splits are not."""

    train: int  # documented, seen classes only; experts learn from these
    val: int  # documented, seen classes only
    test: int  # undocumented, seen classes only
    val_holdout: int  # undocumented, trained on held-out classes too (zero-shot validation)
    test_holdout: int  # undocumented, trained on held-out classes too (zero-shot test)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())


@dataclass(frozen=True)
class TreeSpec:
    """One Model Tree: a pretrained root and its fine-tuned (or LoRA) descendants."""

    tree_id: str  # ground-truth tree name; never appears in the hub, only in the manifest
    arch: MLP | CNN | ViT  # the root's architecture (LoRA trees adapt an MLP root)
    root_repo: str  # foundation-style repo id of the root
    splits: Splits  # how many descendants per split
    kind: str = "full"  # "full" fine-tunes, or "lora" one-class adapters
    children: int = 0  # >0: multi-level; each first-level fine-tune gets this many children
    root_steps: int = 1500  # pretraining steps of the root on all classes
    root_lr: float = 2e-3  # pretraining peak learning rate (cosine schedule)
    steps: tuple[int, int] = (60, 120)  # fine-tune steps, drawn uniformly per model
    lr: tuple[float, float] = (1e-3, 4e-3)  # fine-tune peak lr, drawn log-uniformly
    batch_size: int = 64  # fine-tune batch size (shared so models batch together)
    # "random": a fresh head per fine-tune; "root_rows": the root head's rows of the chosen
    # classes (a warm start common when the new labels are a subset of the pretrained ones)
    head_init: str = "root_rows"


@dataclass(frozen=True)
class ZooPreset:
    """A whole zoo: its trees and the data they are trained on."""

    name: str  # "tiny", "default", ...
    trees: tuple[TreeSpec, ...]  # the Model Trees to grow
    classes_per_model: int = 40  # k: classes per discriminative fine-tune (Model-J: 50 of 100)
    heldout_per_model: int = 8  # of those k, how many are held-out classes in holdout splits
    pool_per_class: int = 200  # training images per class (shared by all fine-tunes)
    eval_per_class: int = 12  # held-out images per class for each model's accuracy
    pretrain_per_class: int = 150  # images per class in each root's own pretraining pool
    chunk: int = 32  # models trained together; 16-48 are as fast per model, 64 is ~15% slower
    lora_rank: int = 4  # rank r of LoRA adapters
    card_lie_rate: float = 0.02  # fraction of documented cards whose base_model is wrong
    weight_decays: tuple[float, ...] = field(default=(0.0, 1e-4, 1e-3, 1e-2))  # drawn per model


_MLP = MLP(hidden=(128, 64))
_LORA_ROOT = MLP(hidden=(256, 128))

_SPLITS = Splits(train=210, val=30, test=30, val_holdout=15, test_holdout=15)
_VIT = ViT(dim=32, depth=2, heads=2, mlp_dim=64)
_CNN = CNN(channels=(16, 32, 64))

DEFAULT = ZooPreset(
    name="default",
    trees=(
        TreeSpec(
            "mlp-a", _MLP, "foundation-lab/mlp-alpha", _SPLITS, steps=(50, 90), lr=(3e-4, 1e-3)
        ),
        TreeSpec(
            "mlp-b",
            _MLP,
            "openvision/mlp-base",
            _SPLITS,
            children=4,
            root_lr=3e-3,
            steps=(50, 90),
            lr=(3e-4, 1e-3),
        ),
        TreeSpec(
            "vit",
            _VIT,
            "openvision/vit-tiny-patch4",
            _SPLITS,
            root_steps=1500,
            steps=(30, 60),
            lr=(2e-3, 5e-3),
            batch_size=32,
        ),
        TreeSpec(
            "cnn",
            _CNN,
            "foundation-lab/convnet-s",
            _SPLITS,
            root_steps=1500,
            root_lr=3e-3,
            steps=(50, 90),
            lr=(5e-4, 1.5e-3),
            batch_size=32,
        ),
        TreeSpec(
            "lora",
            _LORA_ROOT,
            "pixelworks/mlp-wide",
            _SPLITS,
            kind="lora",
            steps=(30, 60),
            lr=(2e-3, 8e-3),
        ),
    ),
)

TINY = ZooPreset(
    name="tiny",
    trees=(
        TreeSpec(
            "mlp-a",
            _MLP,
            "foundation-lab/mlp-alpha",
            Splits(96, 16, 8, 3, 3),
            root_steps=800,
            steps=(40, 70),
            lr=(3e-4, 1e-3),
        ),
        TreeSpec(
            "mlp-b",
            _MLP,
            "openvision/mlp-base",
            Splits(15, 4, 4, 2, 2),
            children=2,
            root_steps=800,
            root_lr=3e-3,
            steps=(40, 70),
            lr=(3e-4, 1e-3),
        ),
        TreeSpec(
            "lora",
            _LORA_ROOT,
            "pixelworks/mlp-wide",
            Splits(64, 8, 6, 4, 4),
            kind="lora",
            root_steps=800,
            steps=(30, 50),
            lr=(2e-3, 8e-3),
        ),
    ),
    pool_per_class=100,
    pretrain_per_class=80,
    eval_per_class=8,
)

MICRO = ZooPreset(
    name="micro",
    trees=(
        TreeSpec(
            "mlp-b",
            _MLP,
            "openvision/mlp-base",
            Splits(3, 1, 1, 1, 0),
            children=2,
            root_steps=300,
            root_lr=3e-3,
            steps=(60, 80),
        ),
        TreeSpec(
            "lora",
            _LORA_ROOT,
            "pixelworks/mlp-wide",
            Splits(2, 1, 1, 1, 1),
            kind="lora",
            root_steps=300,
            steps=(30, 60),
            lr=(2e-3, 8e-3),
        ),
    ),
    pool_per_class=40,
    pretrain_per_class=40,
    eval_per_class=6,
)

PRESETS: dict[str, ZooPreset] = {p.name: p for p in (TINY, DEFAULT, MICRO)}
