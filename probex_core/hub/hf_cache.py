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
from pathlib import Path

from probex_core.hub import parse
from probex_core.hub.local import DirectorySource
from probex_core.hub.records import RepoError, RepoRecord

SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")
LORA_FILE = "pytorch_lora_weights.safetensors"
_MODEL_DIR = re.compile(r"^model_idx_\d+$")
_REVISION = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_REPO_TYPES = ("models", "datasets")


class HFCacheSource(DirectorySource):
    """Repos of a huggingface_hub cache directory (the `hub/` folder, or HF_HOME above it)."""

    name = "hf_cache"

    def __init__(self, cache_dir: Path | str) -> None:
        cache_dir = Path(cache_dir)
        if (cache_dir / "hub").is_dir() and not any(cache_dir.glob("models--*")):
            cache_dir = cache_dir / "hub"  # HF_HOME given instead of HF_HUB_CACHE
        super().__init__(cache_dir)
        # repo id → (location relative to the cache root, revision, split, subset)
        self._index: dict[str, tuple[str, str, str | None, str | None]] = {}

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

    def _scan(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            parts = folder.name.split("--")
            if len(parts) != 3 or parts[0] not in _REPO_TYPES or not folder.is_dir():
                continue
            org, name = parts[1], parts[2]
            rev = self._snapshot(folder)
            if rev is None:
                if parts[0] == "models":  # listed so the crawl reports it
                    self._index[f"{org}/{name}"] = (folder.name, "", None, None)
                    yield f"{org}/{name}"
                continue
            snap = f"{folder.name}/snapshots/{rev}"
            loras = list(self._lora_dirs(self.root / snap))
            if parts[0] == "models" and (not loras or self._has_top_weights(self.root / snap)):
                self._index[f"{org}/{name}"] = (snap, rev, None, None)
                yield f"{org}/{name}"
            for rel, prefix, split, idx in loras:
                repo_id = f"{org}/{'__'.join([name, *prefix, split, idx])}"
                self._index[repo_id] = (f"{snap}/{rel}", rev, split, "__".join(prefix) or None)
                yield repo_id

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

    def _locate(self, repo_id: str) -> tuple[str, str, str | None, str | None]:
        if repo_id not in self._index:
            for _ in self._scan():
                pass
        if repo_id not in self._index:
            raise RepoError(repo_id, "", "not in the cache")
        return self._index[repo_id]

    def crawl(self, repo_id: str) -> RepoRecord:
        parse.validate_repo_id(repo_id)
        location, rev, split, subset = self._locate(repo_id)
        if not rev:
            raise RepoError(repo_id, "", "cache entry has no snapshot")
        extra = {"subset": subset} if subset else {}
        return self._crawl_dir(repo_id, location, revision=rev, split=split, extra=extra)

    def _version(self, path: Path) -> str:
        """Cache blobs are named by content hash (etag / sha256): a true content version."""
        if path.is_symlink():
            return Path(os.readlink(path)).name
        return super()._version(path)
