"""A Hugging Face cache as a hub: `models--org--name/snapshots/<rev>/...`, newest via refs/main.

Besides ordinary repos it understands the Model-J LoRA layout, where one cached repo holds
thousands of adapters as `[subset/]{split}/model_idx_XXXX/pytorch_lora_weights.safetensors`;
each becomes its own record with a synthetic id `org/{name}[__subset]__{split}__model_idx_XXXX`
(e.g. "ProbeX/Model-J__SD_200__train__model_idx_0001") and the split recorded.
Snapshot files are symlinks into `blobs/`; they are followed only while they stay in the cache.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from probex_core.hub import parse
from probex_core.hub.local import DirectorySource
from probex_core.hub.records import RepoError, RepoRecord

SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")
LORA_FILE = "pytorch_lora_weights.safetensors"
_MODEL_DIR = re.compile(r"^model_idx_\d+$")
_REVISION = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_REPO_TYPES = ("models", "datasets")
MODELJ_ORG, MODELJ_NAME = "ProbeX", "Model-J"  # bare LoRA folders are named as the Hub repo


@dataclass(frozen=True)
class SplitFolder:
    """A folder of a Model-J download: one split's cache, or one split's bare LoRA folders."""

    rel: str  # relative to the source root ("" for the root itself)
    split: str | None  # None for an ordinary cache root
    subset: str | None  # "SupViT", "SD_200": the folders above the split (or the root's name)
    kind: str  # "cache" (holds models--*) or "loras" (holds model_idx_N/<LORA_FILE>)


def _is_cache_dir(p: Path) -> bool:
    parts = p.name.split("--")
    return len(parts) == 3 and parts[0] in _REPO_TYPES and p.is_dir()


def find_folders(root: Path, max_depth: int = 6) -> list[SplitFolder]:
    """Every cache and bare-LoRA split folder under `root`, from directory listings only.

    The root is a cache when it holds `models--*`; below it, any folder named after a split
    (`train`, `val`, `test`, `val_holdout`, `test_holdout`) at most `max_depth` levels down is
    one split's cache (the official script's `snapshot_download(cache_dir=<subset>/<split>)`)
    or one split's bare LoRA folders (`hf_hub_download(local_dir=<subset>)`). Hidden folders,
    cache entries and model folders are not descended into.
    """
    found: list[SplitFolder] = []
    if not root.is_dir():
        return found
    if any(_is_cache_dir(p) for p in root.iterdir()):
        found.append(SplitFolder("", None, None, "cache"))
    frontier = [root]
    for _ in range(max_depth):
        nxt = []
        for folder in frontier:
            for child in sorted(folder.iterdir()):
                if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                    continue
                if _is_cache_dir(child) or _MODEL_DIR.match(child.name):
                    continue
                if child.name in SPLITS:
                    rel = child.relative_to(root)
                    subset = "__".join(rel.parts[:-1]) or root.resolve().name
                    kids = [k for k in child.iterdir() if not k.name.startswith(".")]
                    if any(_is_cache_dir(k) for k in kids):
                        found.append(SplitFolder(rel.as_posix(), child.name, subset, "cache"))
                    if any(_MODEL_DIR.match(k.name) and (k / LORA_FILE).is_file() for k in kids):
                        found.append(SplitFolder(rel.as_posix(), child.name, subset, "loras"))
                    continue
                nxt.append(child)
        frontier = nxt
    return found


class HFCacheSource(DirectorySource):
    """Repos of a huggingface_hub cache directory (the `hub/` folder, or HF_HOME above it),
    and of a Model-J download: per-split caches and bare LoRA split folders (SCIENCE.md §7).
    """

    name = "hf_cache"

    def __init__(self, cache_dir: Path | str) -> None:
        cache_dir = Path(cache_dir)
        if (cache_dir / "hub").is_dir() and not any(cache_dir.glob("models--*")):
            cache_dir = cache_dir / "hub"  # HF_HOME given instead of HF_HUB_CACHE
        super().__init__(cache_dir)
        # repo id → (location relative to the cache root, revision, split, subset); revision
        # "" is a cache entry without a snapshot, None a bare folder outside any cache
        self._index: dict[str, tuple[str, str | None, str | None, str | None]] = {}
        # listing id of a second folder holding an indexed repo id → (repo id, its location)
        self._duplicates: dict[str, tuple[str, str]] = {}
        self.folders: list[SplitFolder] = []

    def describe(self, n: int) -> str:
        """One line on what the last listing found (`n` repos), e.g. "Model-J layout
        (SupViT): 3 splits (test, train, val), 1,000 repos"."""
        splits = sorted({f.split for f in self.folders if f.split})
        if not splits:
            return f"Hugging Face cache: {n:,} repos"
        subsets = sorted({f.subset for f in self.folders if f.subset})
        return (
            f"Model-J layout ({', '.join(subsets)}): {len(splits)} splits "
            f"({', '.join(splits)}), {n:,} repos"
        )

    def _snapshot(self, folder: Path) -> str | None:
        """The revision to read: refs/main when present, else the newest snapshot."""
        ref = folder / "refs" / "main"
        if ref.is_file() and ref.resolve().is_relative_to(self._root_resolved):
            rev = ref.read_text(encoding="utf-8", errors="replace").strip()
            if _REVISION.match(rev) and ".." not in rev and (folder / "snapshots" / rev).is_dir():
                return rev
        snaps = folder / "snapshots"
        if not snaps.is_dir():
            return None
        candidates = [p for p in snaps.iterdir() if p.is_dir() and _REVISION.match(p.name)]
        if not candidates:
            return None
        return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name)).name

    def _add(self, repo_id: str, entry: tuple[str, str | None, str | None, str | None]) -> str:
        """Index a repo and return the id to list. The first folder that holds an id keeps
        it; a later one is listed as `<repo id>@<location>`, which `crawl` rejects (with
        both places named) so the duplicate is recorded, not lost."""
        if repo_id in self._index and self._index[repo_id] != entry:
            listed = f"{repo_id}@{entry[0]}"
            self._duplicates[listed] = (repo_id, entry[0])
            return listed
        self._index[repo_id] = entry
        return repo_id

    def _scan(self) -> Iterator[str]:
        self.folders = find_folders(self.root)
        for folder in self.folders:
            if folder.kind == "cache":
                yield from self._scan_cache(folder)
            else:
                yield from self._scan_loras(folder)

    def _scan_cache(self, where: SplitFolder) -> Iterator[str]:
        base = self.root / where.rel
        prefix = f"{where.rel}/" if where.rel else ""
        for folder in sorted(base.iterdir()):
            if not _is_cache_dir(folder):
                continue
            kind, org, name = folder.name.split("--")
            rev = self._snapshot(folder)
            if rev is None:
                if kind == "models":  # listed so the crawl reports it
                    yield self._add(
                        f"{org}/{name}", (prefix + folder.name, "", where.split, where.subset)
                    )
                continue
            snap = f"{prefix}{folder.name}/snapshots/{rev}"
            loras = list(self._lora_dirs(self.root / snap))
            if kind == "models" and (not loras or self._has_top_weights(self.root / snap)):
                yield self._add(f"{org}/{name}", (snap, rev, where.split, where.subset))
            for rel, parts, split, idx in loras:
                repo_id = f"{org}/{'__'.join([name, *parts, split, idx])}"
                yield self._add(repo_id, (f"{snap}/{rel}", rev, split, "__".join(parts) or None))

    def _scan_loras(self, where: SplitFolder) -> Iterator[str]:
        """Bare `model_idx_N/pytorch_lora_weights.safetensors` folders of one split; ids as
        the cached layout's: `ProbeX/Model-J__<subset>__<split>__model_idx_N`."""
        for folder in sorted((self.root / where.rel).iterdir()):
            if _MODEL_DIR.match(folder.name) and (folder / LORA_FILE).is_file():
                repo_id = (
                    f"{MODELJ_ORG}/{MODELJ_NAME}__{where.subset}__{where.split}__{folder.name}"
                )
                location = f"{where.rel}/{folder.name}"
                yield self._add(repo_id, (location, None, where.split, where.subset))

    @staticmethod
    def _has_top_weights(snap: Path) -> bool:
        return any(
            (snap / f).exists()
            for f in (parse.FULL_WEIGHTS, parse.SHARD_INDEX, *parse.LORA_WEIGHTS)
        )

    @staticmethod
    def _lora_dirs(snap: Path) -> Iterator[tuple[str, list[str], str, str]]:
        """(dir relative to snapshot, subset parts, split, model_idx) of Model-J LoRA models."""
        for dirpath, dirnames, filenames in os.walk(snap, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if LORA_FILE not in filenames:
                continue
            rel = Path(dirpath).relative_to(snap)
            parts = rel.parts
            if len(parts) >= 2 and _MODEL_DIR.match(parts[-1]) and parts[-2] in SPLITS:
                yield rel.as_posix(), list(parts[:-2]), parts[-2], parts[-1]

    def list_repos(self) -> Iterator[str]:
        """Ordinary cached model repos, plus one id per Model-J LoRA model directory."""
        yield from self._scan()

    def _locate(self, repo_id: str) -> tuple[str, str | None, str | None, str | None]:
        if repo_id not in self._index:
            for _ in self._scan():
                pass
        if repo_id not in self._index:
            raise RepoError(repo_id, "", "not in the cache")
        return self._index[repo_id]

    def crawl(self, repo_id: str) -> RepoRecord:
        if repo_id in self._duplicates:
            original, where = self._duplicates[repo_id]
            kept = self._index[original][0]
            raise RepoError(original, where, f"duplicate repo id: also at {kept}, which is kept")
        parse.validate_repo_id(repo_id)
        location, rev, split, subset = self._locate(repo_id)
        if rev == "":
            raise RepoError(repo_id, "", "cache entry has no snapshot")
        extra = {"subset": subset} if subset else {}
        return self._crawl_dir(repo_id, location, revision=rev, split=split, extra=extra)

    def _version(self, path: Path) -> str:
        """Cache blobs are named by content hash (etag / sha256): a true content version."""
        if path.is_symlink():
            return Path(os.readlink(path)).name
        return super()._version(path)


def modelj_download_dir(subset: str = "") -> Path:
    """Where the official script downloads without `--output_dir`:
    `cached_assets_path(library_name="ProbeX", namespace="ModelJ")/models/<subset>`.
    HF_ASSETS_CACHE is read now, not when huggingface_hub was imported."""
    from huggingface_hub import cached_assets_path

    assets = os.environ.get("HF_ASSETS_CACHE")
    base = cached_assets_path(library_name="ProbeX", namespace="ModelJ", assets_dir=assets)
    return base / "models" / subset if subset else base / "models"


def looks_like_cache(root: Path) -> bool:
    """A Hugging Face cache or a Model-J download rather than a plain `<org>/<name>/` hub."""
    return (
        (root / "hub").is_dir()
        and any((root / "hub").glob("models--*"))
        or bool(find_folders(root))
    )
