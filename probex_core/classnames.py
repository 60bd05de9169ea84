"""Class labels as people write them: WordNet ids to ImageNet names, underscores to spaces.

Model-J's LoRAs carry a WordNet id (`imagenet_class_id: n01983481`) and its discriminative
models CIFAR-100 names with underscores (`aquarium_fish`). Prompts and search need words:
"a photo of a American lobster", "a photo of a aquarium fish", as the paper's code builds them.
The id → name table of all 1,000 ImageNet-1k classes ships in `data/imagenet1k_classes.tsv`
(its header states the source).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

WORDNET_ID = re.compile(r"^n\d{8}$")


@functools.cache
def imagenet_names() -> dict[str, str]:
    """WordNet id → class name for the 1,000 ImageNet-1k classes."""
    text = resources.files("probex_core").joinpath("data/imagenet1k_classes.tsv").read_text()
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return {wnid: name for wnid, name in rows}


def class_name(label: str) -> str:
    """The readable name of one label: an ImageNet-1k WordNet id becomes its class name, and
    underscores become spaces. Ids outside ImageNet-1k are kept as they are."""
    label = label.strip()
    if WORDNET_ID.match(label):
        return imagenet_names().get(label, label)
    return " ".join(label.replace("_", " ").split())
