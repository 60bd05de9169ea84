"""Hub sources: one interface (`HubSource`), three implementations, lazy single-tensor reads.

- `LocalHubSource(root)`: a directory `ROOT/<org>/<name>/` (the built-in zoo);
- `HFCacheSource(cache_dir)`: a Hugging Face cache, including Model-J's layouts;
- `HubApiSource(endpoint, ...)`: the Hub API, headers by range request, one tensor per GET.

`make_source(spec)` is the one place that chooses among them. `crawl_all` reads headers and
cards only; `read_layer` later fetches just the tensors of one layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch

from probex_core.canon import assemble_layer, find_layers
from probex_core.errors import UserError
from probex_core.hub.hf_cache import HFCacheSource, looks_like_cache, modelj_download_dir
from probex_core.hub.local import DirectorySource, LocalHubSource
from probex_core.hub.records import (
    HubSource,
    Rejected,
    RepoError,
    RepoRecord,
    TensorInfo,
    printable,
)

__all__ = [
    "DirectorySource",
    "HFCacheSource",
    "HubApiSource",
    "HubSource",
    "LocalHubSource",
    "Rejected",
    "RepoError",
    "RepoRecord",
    "TensorInfo",
    "crawl_all",
    "describe_hub",
    "make_source",
    "read_layer",
    "require_finite",
]

log = logging.getLogger(__name__)


def read_layer(
    source: HubSource, record: RepoRecord, layer_name: str, lora_scale: float = 1.0
) -> torch.Tensor:
    """One layer's canonical 2-D matrix, reading only the tensors that layer needs.

    The grouping comes from the record's header shapes (`canon.find_layers`), so nothing is
    read to decide what to read; a LoRA layer reads its A and B and returns B @ A.
    """
    layers = find_layers(record.tensor_shapes(), include_vectors=True)
    if layer_name not in layers:
        raise RepoError(record.repo_id, record.weights_file, f"no layer named {layer_name!r}")
    spec = layers[layer_name]
    return assemble_layer(spec, source.read_tensors(record, spec.tensors), lora_scale)


def require_finite(record: RepoRecord, layer_name: str, x: torch.Tensor) -> torch.Tensor:
    """`x` itself when every value is finite; else a RepoError naming the layer's file and
    how many NaN and Inf values it holds (one such model would poison every distance and
    every expert of its tree)."""
    if not x.is_floating_point() or bool(torch.isfinite(x).all()):
        return x
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    spec = find_layers(record.tensor_shapes(), include_vectors=True).get(layer_name)
    files = {record.tensors[t].file for t in spec.tensors} if spec else set()
    path = sorted(files)[0] if files else record.weights_file
    raise RepoError(
        record.repo_id,
        path,
        f"layer {layer_name!r} has {n_nan} NaN and {n_inf} Inf of {x.numel()} values",
    )


def crawl_all(
    source: HubSource, on_repo: Callable[[int, int], None] | None = None
) -> tuple[list[RepoRecord], list[Rejected]]:
    """Crawl every repo the source lists; a bad repo becomes `Rejected`, never a crash.

    Anything a hostile or broken repo can provoke is caught per repo (RepoError, and as a
    last line of defence any other Exception, recorded with its type) so one repo never
    stops the crawl. `on_repo(done, rejected)` is called after each repo (progress).
    """
    records: list[RepoRecord] = []
    rejected: list[Rejected] = []
    for repo_id in source.list_repos():
        try:
            records.append(source.crawl(repo_id))
        except RepoError as e:
            rejected.append(Rejected(e.repo_id, e.path, e.reason))
        except Exception as e:  # noqa: BLE001 - untrusted input must not stop the crawl
            log.warning("unexpected error crawling %s: %r", repo_id, e)
            rejected.append(
                Rejected(
                    printable(str(repo_id)), "", printable(f"unexpected {type(e).__name__}: {e}")
                )
            )
        if on_repo is not None:
            on_repo(len(records) + len(rejected), len(rejected))
    return records, rejected


def make_source(spec: str | Path) -> HubSource:
    """Choose a source from one string: the single place the environment is decided.

    - "DIR" (or a Path): a local hub directory; a zoo output dir (with manifest.json and
      hub/) resolves to its hub/; a Hugging Face cache or a Model-J download (per-split
      caches, bare LoRA split folders; SCIENCE.md §7) is recognised without a prefix;
    - "hf-cache:DIR": a Hugging Face cache directory (the `hub` folder or HF_HOME);
    - "modelj:SUBSET": a Model-J subset where the official script downloads it without
      `--output_dir` ("modelj:" alone: every subset found there);
    - "hf:ENDPOINT?filter=TAG&author=ORG&search=TEXT&base_model=ORG/NAME&limit=N": the Hub
      API ("hf:" alone means https://huggingface.co); filter may repeat. The token comes from
      the usual huggingface_hub configuration (HF_TOKEN), never from the spec string.
    """
    if isinstance(spec, Path):
        return _local(spec)
    if spec.startswith("hf-cache:"):
        return HFCacheSource(Path(spec[len("hf-cache:") :]).expanduser())
    if spec.startswith("modelj:"):
        return HFCacheSource(modelj_download_dir(spec[len("modelj:") :]))
    if spec.startswith("hf:"):
        from probex_core.hub.api import HubApiSource

        url = urlsplit(spec[len("hf:") :])
        endpoint = f"{url.scheme}://{url.netloc}{url.path}".rstrip("/") if url.netloc else None
        query = parse_qs(url.query)

        def one(key: str) -> str | None:
            return query[key][-1] if key in query else None

        limit = one("limit")
        return HubApiSource(
            endpoint=endpoint or "https://huggingface.co",
            filter=query.get("filter"),
            author=one("author"),
            search=one("search"),
            base_model=one("base_model"),
            limit=int(limit) if limit else None,
        )
    return _local(Path(spec).expanduser())


LAYOUTS = (
    "<org>/<name>/ repo folders, a Hugging Face cache (models--*), or a Model-J download "
    "({split}/models--* caches or {split}/model_idx_N/ LoRA folders)"
)


def describe_hub(spec: str, source: HubSource) -> str:
    """One line on what a directory hub holds; a UserError when there is nothing to read.

    Sources that list over the network (the Hub API) are not listed twice: they get a line
    naming the source only.
    """
    if not isinstance(source, DirectorySource):
        return f"{source.name} hub {spec}"
    if not source.root.exists():
        raise UserError(f"hub not found: {source.root}")
    if not source.root.is_dir():
        raise UserError(f"hub is not a directory: {source.root}")
    n = sum(1 for _ in source.list_repos())
    if n == 0:
        raise UserError(f"no repos found under {source.root}: expected {LAYOUTS}")
    return (
        source.describe(n) if isinstance(source, HFCacheSource) else f"hub directory: {n:,} repos"
    )


def _local(path: Path) -> HubSource:
    if (path / "hub").is_dir() and (path / "manifest.json").is_file():
        return LocalHubSource(path / "hub")
    if path.is_dir() and looks_like_cache(path):
        return HFCacheSource(path)
    return LocalHubSource(path)


def __getattr__(name: str) -> object:
    # The API source imports huggingface_hub's HTTP stack; load it on first use only.
    if name == "HubApiSource":
        from probex_core.hub.api import HubApiSource

        return HubApiSource
    raise AttributeError(name)
