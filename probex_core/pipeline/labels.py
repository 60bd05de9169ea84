"""What the experts learn from and are scored against: the tree's label matrix, the
train/val split of its documented members, the majority-guess chance, and the text encoder
behind its on-disk cache."""

from __future__ import annotations

import functools

import numpy as np
import torch

from probex_core.catalog import Home, read_table
from probex_core.digest import digest
from probex_core.metrics import per_class_accuracy
from probex_core.text import (
    CachedTextEncoder,
    DeferredEncoder,
    EmbeddingCache,
    encoder_identity,
    get_text_encoder,
)
from probex_core.zeroshot import multi_hot


def text_encoder(home: Home, spec: str):
    """The configured encoder behind an on-disk cache: a text is encoded once per encoder, and
    the encoder is loaded only if a text is not in the cache yet (when its name and width are
    known without loading it: MiniLM's)."""
    known = encoder_identity(spec)
    inner = (
        DeferredEncoder(*known, lambda: _loaded_encoder(spec)) if known else _loaded_encoder(spec)
    )
    return CachedTextEncoder(inner, EmbeddingCache(home.artifacts / "text_cache"))


@functools.lru_cache(maxsize=4)
def _loaded_encoder(spec: str):
    """One loaded encoder per spec and process: predict and evaluate ask once per tree, and
    loading MiniLM takes seconds."""
    return get_text_encoder(spec)


def split_documented(
    repo_ids: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """A stable train/val split of the documented members: by a hash of (seed, repo id)."""
    keyed = sorted(range(len(repo_ids)), key=lambda i: digest(seed, repo_ids[i]))
    n_val = max(1, round(val_fraction * len(repo_ids)))
    return sorted(keyed[n_val:]), sorted(keyed[:n_val])


def split_members(
    home: Home, repo_ids: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int], str]:
    """Train/val positions of the documented members `repo_ids`, and where the split came
    from.

    A hub that declares splits (Model-J; the crawl's `split` column) is followed: "val"
    models validate, the rest train ("hub"). Without a declared "val" split, a stable hash of
    (seed, repo id) holds out `val_fraction` ("hash"). Evaluation splits never get here:
    their labels are withheld at the crawl (`RepoRecord.withheld_classes`).
    """
    split = read_table(home, "repos").set_index("repo_id").split
    declared = [split.get(r) for r in repo_ids]
    val = [i for i, s in enumerate(declared) if s == "val"]
    if val and len(val) < len(repo_ids):
        return [i for i, s in enumerate(declared) if s != "val"], val, "hub"
    tr, va = split_documented(repo_ids, val_fraction, seed)
    return tr, va, "hash"


def tree_labels(home: Home, repo_ids: list[str]) -> tuple[list[str], list[int], torch.Tensor]:
    """Class list of the tree, the member rows that are documented (roots excluded), and Y."""
    repos = read_table(home, "repos").set_index("repo_id")
    members = read_table(home, "tree_members").set_index("repo_id")
    labelled = []
    for i, rid in enumerate(repo_ids):
        classes = repos.at[rid, "training_classes"]
        if is_list(classes) and len(classes) and not bool(members.at[rid, "is_root"]):
            labelled.append((i, list(classes)))
    classes = sorted({c for _, cs in labelled for c in cs})
    return classes, [i for i, _ in labelled], multi_hot([cs for _, cs in labelled], classes)


def is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def majority_chance(Y_train: torch.Tensor, Y_val: torch.Tensor) -> float:
    """Per-class accuracy of always answering each class's majority label from training."""
    guess = (Y_train.mean(0) > 0.5).float().expand_as(Y_val)
    return per_class_accuracy(Y_val.numpy(), guess.numpy())
