"""Turning a repo's untrusted text (ids, cards, configs, safetensors metadata) into a record.

Shared by every source so that a repo reads the same whether it sits in a directory, a
Hugging Face cache, or on the Hub. Nothing here is ever evaluated: JSON via `json.loads`,
Python-literal lists (Model-J writes them) via `ast.literal_eval`, YAML via `yaml.safe_load`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from probex_core.classnames import class_name
from probex_core.hub.cards import CARD_FILE, MAX_INT_BITS, parse_card, parse_config
from probex_core.hub.records import EVAL_SPLITS, RepoError, RepoRecord, TensorInfo
from probex_core.hub.safetensors_io import ParsedHeader

MAX_TEXT_BYTES = 10 * 1024 * 1024  # README / config size limit
MAX_LITERAL_CHARS = 1024 * 1024  # metadata value size limit before literal parsing
MAX_FILES = 100_000  # files listed per repo

_ID_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"^{_ID_PART}/{_ID_PART}$")

# Weight files in order of preference; the kind follows from which one a repo has.
FULL_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
LORA_WEIGHTS = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONFIG_FILES = ("adapter_config.json", "config.json")


def validate_repo_id(repo_id: str) -> str:
    """Accept only "org/name" with hub-safe characters; ids become paths, so no "..", no "/"."""
    if (
        not isinstance(repo_id, str)
        or not _REPO_ID.match(repo_id)
        or ".." in repo_id
        or "--" in repo_id.split("/")[0]
    ):
        raise RepoError(str(repo_id), "", "invalid repo id (expected org/name, no '..')")
    return repo_id


def validate_rel_path(repo_id: str, path: str) -> str:
    """A file path inside a repo: relative, no "..", no backslashes or NULs."""
    p = PurePosixPath(path)
    if (
        not path
        or p.is_absolute()
        or ".." in p.parts
        or "\\" in path
        or "\x00" in path
        or len(path) > 1024
    ):
        raise RepoError(repo_id, path, "unsafe file path")
    return path


def choose_weights(repo_id: str, files: Sequence[str]) -> tuple[str, str]:
    """Pick the safetensors weights of a repo; return (file, kind).

    Refuses pickle-only repos outright: a .bin/.pt file is never opened.
    """
    present = set(files)
    if FULL_WEIGHTS in present:
        return FULL_WEIGHTS, "full"
    if SHARD_INDEX in present:
        return SHARD_INDEX, "full"
    for name in LORA_WEIGHTS:
        if name in present:
            return name, "lora"
    pickles = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise RepoError(
            repo_id, pickles[0], "only pickle-based weights; probex reads safetensors only"
        )
    raise RepoError(repo_id, "", "missing weights: no model.safetensors or adapter safetensors")


def check_text_size(repo_id: str, path: str, size: int) -> None:
    """Cards and configs are small; a huge one is refused before it is read."""
    if size > MAX_TEXT_BYTES:
        raise RepoError(repo_id, path, f"{size} bytes exceeds the {MAX_TEXT_BYTES}-byte limit")


def decode_text(repo_id: str, path: str, data: bytes) -> str:
    check_text_size(repo_id, path, len(data))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RepoError(repo_id, path, f"not UTF-8 text: {e}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if not all(isinstance(k, str | int | float | bool) for k in value):
            raise ValueError("dict keys must be scalars")
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"integer of more than {MAX_INT_BITS} bits")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"{type(value).__name__} is not plain data")


def decode_metadata_value(repo_id: str, path: str, key: str, value: str) -> Any:
    """One safetensors metadata string → JSON value, Python literal, or the string itself.

    Structured-looking values (starting with [ { ( or a quote) must parse as JSON or as a
    literal, otherwise the repo is rejected: such a value is either broken or an attempt at
    code. Everything else (e.g. "pt") stays a string; numbers and booleans become numbers.
    """
    s = value.strip()
    try:
        return json.loads(s)
    except (ValueError, RecursionError):
        pass
    if not s or s[0] not in "[{('\"":
        return value
    if len(s) > MAX_LITERAL_CHARS:
        raise RepoError(repo_id, path, f"metadata {key!r}: literal of {len(s)} chars is too long")
    try:
        return _jsonable(ast.literal_eval(s))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise RepoError(
            repo_id,
            path,
            # the exception text can hold memory addresses; keep reasons stable across runs
            f"metadata {key!r} is neither JSON nor a Python literal ({type(e).__name__})",
        ) from None


def decode_metadata(repo_id: str, path: str, raw: Mapping[str, str]) -> dict[str, Any]:
    return {k: decode_metadata_value(repo_id, path, k, v) for k, v in raw.items()}


def _class_list(repo_id: str, path: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and value and all(isinstance(v, str | int) for v in value):
        return tuple(class_name(str(v)) for v in value)
    raise RepoError(repo_id, path, f"{key!r} is not a non-empty list of class names")


def training_classes(
    repo_id: str, weights_file: str, metadata: Mapping[str, Any], card: Mapping[str, Any]
) -> tuple[str, ...] | None:
    """Documented training labels, from the weights' metadata first, then the card.

    Keys: "training_classes" (the built-in zoo), "dataset_chosen_targets" (Model-J), and
    "imagenet_class_id" (Model-J LoRA: one WordNet id per model). Labels are stored as
    readable names (`classnames.class_name`): "American lobster", not "n01983481".
    """
    for key in ("training_classes", "dataset_chosen_targets"):
        if key in metadata:
            return _class_list(repo_id, weights_file, key, metadata[key])
    if "imagenet_class_id" in metadata:
        value = metadata["imagenet_class_id"]
        if isinstance(value, list):
            return _class_list(repo_id, weights_file, "imagenet_class_id", value)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return (class_name(str(value)),)
        raise RepoError(repo_id, weights_file, "'imagenet_class_id' is not a class id")
    if "training_classes" in card:
        return _class_list(repo_id, CARD_FILE, "training_classes", card["training_classes"])
    return None


_LEGACY_ID = re.compile(rf"^{_ID_PART}$")  # pre-namespace hub ids: "gpt2", "bert-base-uncased"


def _is_base_model_id(name: object) -> bool:
    """A name a card may give as base_model: "org/name", or a legacy id without an org."""
    if not isinstance(name, str) or ".." in name:
        return False
    if _LEGACY_ID.match(name):
        return True
    try:
        validate_repo_id(name)
    except RepoError:
        return False
    return True


def _declared_names(value: Any) -> list[str]:
    """A base_model value as its candidate names: a string, or the strings of a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _names_itself(repo_id: str, card: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """The card or adapter config gives the repo itself as its base model."""
    return repo_id in _declared_names(card.get("base_model")) or repo_id == config.get(
        "base_model_name_or_path"
    )


def base_models(
    card: Mapping[str, Any], config: Mapping[str, Any], repo_id: str | None = None
) -> tuple[tuple[str, ...], str | None]:
    """Declared parents and relation: card base_model, else PEFT's base_model_name_or_path.

    Only valid hub ids count (numbers, mappings, local paths, URLs are ignored), each once;
    `repo_id` itself is never its own parent.
    """
    relation = card.get("base_model_relation")
    relation = relation if isinstance(relation, str) else None

    def valid(value: Any) -> tuple[str, ...]:
        names = (n for n in _declared_names(value) if n != repo_id and _is_base_model_id(n))
        return tuple(dict.fromkeys(names))

    names = valid(card.get("base_model"))
    if names:
        return names, relation
    peft_base = config.get("base_model_name_or_path")
    names = valid(peft_base) if isinstance(peft_base, str) else ()
    if names:
        return names, relation or "adapter"
    return (), relation


def signature(tensors: Mapping[str, TensorInfo]) -> str:
    """sha1 of the sorted (name, shape, dtype) list: equal for same-architecture repos."""
    items = sorted((t.name, list(t.shape), t.dtype) for t in tensors.values())
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()


def fingerprint(
    headers: Mapping[str, bytes],
    sizes: Mapping[str, int],
    texts: Mapping[str, str | None],
    versions: Mapping[str, str] | None = None,
) -> str:
    """sha256 over header bytes, file sizes, card/config text and weight versions.

    Header, sizes and text catch architecture, metadata and card edits. Weights re-trained
    in place keep the same header and size, so each source adds a content version of its
    weight files when it has one (cache blob hash, Hub LFS sha256, local mtime) — the
    fingerprint then tells a sensor which repos (and trees) to rebuild.
    """
    h = hashlib.sha256()

    def feed(tag: str, data: bytes) -> None:
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    for name in sorted(headers):
        feed("header:" + name, headers[name])
    for name in sorted(sizes):
        feed("size:" + name, str(sizes[name]).encode())
    for name in sorted(texts):
        text = texts[name]
        feed("text:" + name, b"\x00" if text is None else text.encode())
    for name in sorted(versions or {}):
        feed("version:" + name, (versions or {})[name].encode())
    return h.hexdigest()


def _merge_shards(
    repo_id: str, headers: Mapping[str, ParsedHeader]
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """All shards' tensors (a name in two shards is refused) and metadata (first shard wins)."""
    tensors: dict[str, TensorInfo] = {}
    raw_meta: dict[str, str] = {}
    for file in sorted(headers):
        parsed = headers[file]
        for name, info in parsed.tensors.items():
            if name in tensors:
                raise RepoError(repo_id, file, f"tensor {name!r} appears in two shards")
            tensors[name] = info
        for key, value in parsed.metadata.items():
            raw_meta.setdefault(key, value)
    return tensors, raw_meta


def build_record(
    *,
    repo_id: str,
    source: str,
    kind: str,
    weights_file: str,
    files: Sequence[str],
    headers: Mapping[str, ParsedHeader],
    sizes: Mapping[str, int],
    card_text: str | None,
    config_file: str | None,
    config_text: str | None,
    revision: str | None = None,
    split: str | None = None,
    location: str = "",
    extra: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
) -> RepoRecord:
    """Assemble a record from what a source fetched; every source ends here."""
    card = parse_card(repo_id, card_text)
    config = parse_config(repo_id, config_file or "", config_text)
    tensors, raw_meta = _merge_shards(repo_id, headers)
    meta_path = weights_file if weights_file in headers else sorted(headers)[0]
    metadata = decode_metadata(repo_id, meta_path, raw_meta)
    classes = training_classes(repo_id, meta_path, metadata, card)
    withheld = None
    if split in EVAL_SPLITS and classes:  # the paper's protocol: test labels only score
        classes, withheld = None, classes
    bases, relation = base_models(card, config, repo_id)
    notes = dict(extra or {})
    if _names_itself(repo_id, card, config):  # a repo is never its own parent
        notes["ignored_base_model"] = "names the repo itself"
    texts = {CARD_FILE: card_text, config_file or "config": config_text}
    return RepoRecord(
        repo_id=repo_id,
        source=source,
        kind=kind,
        weights_file=weights_file,
        files=tuple(sorted(files)),
        card=card,
        base_model=bases,
        base_model_relation=relation,
        config=config,
        metadata=metadata,
        training_classes=classes,
        documented=bool(classes),
        tensors=tensors,
        signature=signature(tensors),
        fingerprint=fingerprint(
            {f: p.header_bytes for f, p in headers.items()}, sizes, texts, versions
        ),
        revision=revision,
        split=split,
        withheld_classes=withheld,
        location=location,
        extra=notes,
    )


def shard_files(repo_id: str, index_text: str) -> list[str]:
    """Shard file names from a model.safetensors.index.json, each a safe .safetensors path."""
    index = parse_config(repo_id, SHARD_INDEX, index_text)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise RepoError(repo_id, SHARD_INDEX, "index has no weight_map")
    shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
    if len(shards) != len(set(weight_map.values())):
        raise RepoError(repo_id, SHARD_INDEX, "weight_map values must be file names")
    for shard in shards:
        validate_rel_path(repo_id, shard)
        if not shard.endswith(".safetensors"):
            raise RepoError(repo_id, shard, "shard is not a safetensors file")
    return shards
