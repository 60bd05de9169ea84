"""A planned model written as a Hugging Face repo: config.json, card, weights (full or LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

from probex_core.zoo.archs import CNN, MLP, LoraMLP, Params, ViT
from probex_core.zoo.data import CLASSES
from probex_core.zoo.plan import ARCH_NAMES, Planned
from probex_core.zoo.writer import model_card, write_repo


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


def _weights_metadata(p: Planned) -> tuple[dict[str, str], list[str]]:
    """The safetensors metadata of a planned model (its classes and hyperparameters only when
    documented) and its class names."""
    meta = {"format": "pt"}
    names = [CLASSES[c] for c in p.classes]
    if p.documented:
        meta |= {
            "training_classes": json_dumps(names),
            "hyperparameters": json_dumps(p.hyper.as_dict()),
        }
    return meta, names


def write_full_repo(hub: Path, p: Planned, arch: MLP | CNN | ViT, tensors: Params) -> None:
    meta, names = _weights_metadata(p)
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


def write_lora_repo(hub: Path, p: Planned, lora: LoraMLP, tensors: Params) -> None:
    meta, names = _weights_metadata(p)
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
