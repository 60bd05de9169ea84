"""What every hub source produces: crawl records, errors, and the source interface.

A crawl reads headers, cards and configs only; the record carries the tensor index (byte
offsets) so that a later stage can fetch exactly one layer without touching the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

EVAL_SPLITS = ("test", "val_holdout", "test_holdout")  # declared splits scored, never trained on
MAX_FILE_ENV = "PROBEX_MAX_FILE_BYTES"  # the size limit of one weights file, in bytes
DEFAULT_MAX_FILE_BYTES = 64 * 2**30  # above the largest single shard hubs serve today


def printable(text: str) -> str:
    """Text safe to store and print: a file name that is not UTF-8 reaches Python with
    surrogate escapes, which neither Parquet nor a terminal accepts; they become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class RepoError(Exception):
    """A repo that cannot be used, with the file at fault and why.

    Raised for untrusted or broken input (truncated weights, bad headers, escaping symlinks,
    pickle-only repos, metadata that is not a literal); `crawl_all` turns it into `Rejected`.
    """

    def __init__(self, repo_id: str, path: str, reason: str) -> None:
        self.repo_id = printable(repo_id)
        self.path = printable(path)
        self.reason = printable(reason)
        repo_id, path = self.repo_id, self.path
        where = f"{repo_id}/{path}" if path else repo_id
        super().__init__(f"{where}: {reason}")


def check_file_size(repo_id: str, path: str, size: int) -> None:
    """Refuse a weights file over the configured limit ($PROBEX_MAX_FILE_BYTES, read now) before
    any byte of it is read: a crawler must not be made to fetch or map an endless file."""
    raw = os.environ.get(MAX_FILE_ENV, "")
    try:
        limit = int(raw) if raw else DEFAULT_MAX_FILE_BYTES
    except ValueError:
        raise ValueError(f"{MAX_FILE_ENV}={raw!r} is not a number of bytes") from None
    if size > limit:
        raise RepoError(
            repo_id, path, f"{size} bytes exceeds the {limit}-byte file limit ({MAX_FILE_ENV})"
        )


@dataclass(frozen=True)
class Rejected:
    """A repo the crawl skipped; becomes a row of the `rejected_repos` view."""

    repo_id: str
    path: str  # file inside the repo at fault ("" when the repo as a whole is)
    reason: str


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live, from the safetensors header alone."""

    name: str
    dtype: str  # safetensors dtype, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    file: str  # path inside the repo (relative to the record's location)
    start: int  # absolute byte offset of the first byte in `file`
    end: int  # absolute byte offset one past the last byte


@dataclass(frozen=True)
class RepoRecord:
    """Everything the pipeline knows about one repo before reading any weight."""

    repo_id: str  # hub id "org/name" (Model-J LoRAs: a synthetic id naming subset, split, index)
    source: str  # "local" | "hf_cache" | "hf_api"
    kind: str  # "full" | "lora"
    weights_file: str  # the safetensors file (or sharded index) the tensors come from
    files: tuple[str, ...]  # every file of the repo, sorted
    card: dict[str, Any]  # README YAML front matter; {} when there is none
    base_model: tuple[str, ...]  # declared parent(s): a hint to check, not the truth
    base_model_relation: str | None  # finetune | adapter | merge | quantized, when declared
    config: dict[str, Any]  # config.json or adapter_config.json
    metadata: dict[str, Any]  # safetensors __metadata__, values decoded (JSON / literals)
    training_classes: tuple[str, ...] | None  # documented labels, None when undocumented
    documented: bool  # training_classes is known
    tensors: dict[str, TensorInfo]  # tensor index by name
    signature: str  # sha1 of sorted (name, shape, dtype): same architecture, same signature
    fingerprint: str  # sha256 of headers, file sizes, card and config: changes with the repo
    revision: str | None = None  # commit the record was read at (cache snapshot, hub sha)
    split: str | None = None  # split the hub declares (Model-J: train, val, test, val_holdout, ...)
    # labels of a model in an evaluation split (EVAL_SPLITS): ground truth for `evaluations`
    # only; such a model is undocumented to every other stage, so no expert learns from it
    withheld_classes: tuple[str, ...] | None = None
    location: str = ""  # where the source finds the files again (relative dir or hub id)
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific notes (e.g. subset)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name → shape, the input `canon.find_layers` groups into layers."""
        return {name: info.shape for name, info in self.tensors.items()}


@runtime_checkable
class HubSource(Protocol):
    """One way to reach a hub: local directory, Hugging Face cache, or the Hub API."""

    name: str
    # True when listing reads only local directories: a crawl then records the listing it
    # started from (a Hub API listing is a network crawl of its own)
    cheap_listing: bool

    def list_repos(self) -> Iterator[str]:
        """Repo ids this source offers, cheaply (no file reads beyond directory listings)."""
        ...

    def listing_fingerprint(self) -> str:
        """A hash of what the hub lists: the ids, plus each repo's file names, sizes and
        modification times where the repos are directories under a root. What the
        hub-change sensor compares between ticks."""
        ...

    def crawl(self, repo_id: str) -> RepoRecord:
        """Headers, card and config of one repo; raises RepoError for a bad repo."""
        ...

    def read_tensors(self, record: RepoRecord, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Exactly the named tensors, reading only their bytes."""
        ...
