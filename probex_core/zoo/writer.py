"""Write models as a local Hugging Face hub: deterministic bytes, atomic repos.

`safetensors.torch.save_file` writes its metadata map in hash order, so two runs of the
same seed would differ in the header; `save_safetensors` writes the same format with sorted
keys instead, so equal tensors give equal files.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch
import yaml

from probex_core.files import atomic_path

LICENSE = "apache-2.0"


def save_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write float32 `tensors` in the safetensors format with a byte-stable header."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = t.numpy().tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_json_atomic(path: Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        write_json(tmp, obj)


def model_card(
    name: str,
    documented: bool,
    base_model: str | None,
    relation: str | None,
    training_classes: list[str],
    tags: list[str],
    description: str,
) -> str:
    """A README.md; documented cards carry YAML front matter that `ModelCard.load` parses."""
    body = f"# {name}\n\n{description}\n"
    if not documented:
        return body
    meta: dict[str, object] = {}
    if base_model is not None:
        meta["base_model"] = base_model
        meta["base_model_relation"] = relation
    meta |= {"license": LICENSE, "tags": tags, "training_classes": training_classes}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{body}"


def write_repo(hub: Path, repo_id: str, files: dict[str, str | tuple[dict, dict]]) -> None:
    """Write one repo atomically: build it in a temp dir, then swap it into place.

    `files` maps a file name to its text, or to (tensors, metadata) for a safetensors file.
    An existing repo of the same id is replaced (reruns regenerate and overwrite).
    """
    final = hub / repo_id
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for fname, content in sorted(files.items()):
        if isinstance(content, tuple):
            save_safetensors(tmp / fname, *content)
        else:
            (tmp / fname).write_text(content)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def prune_hub(hub: Path, keep: set[str]) -> None:
    """Remove repos (and leftover temp dirs) that are not part of the current zoo."""
    if not hub.exists():
        return
    for org in hub.iterdir():
        if not org.is_dir():
            continue
        for repo in org.iterdir():
            if f"{org.name}/{repo.name}" not in keep:
                shutil.rmtree(repo) if repo.is_dir() else repo.unlink()
        if not any(org.iterdir()):
            org.rmdir()
