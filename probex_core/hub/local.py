"""Hub sources backed by files on disk: a plain hub directory (the built-in zoo's layout).

`DirectorySource` holds everything that reads repo folders: path containment, listing,
header parsing and single-tensor reads by seek + read. `LocalHubSource` maps ids to
`ROOT/<org>/<name>/`; the Hugging Face cache source reuses the same machinery.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from probex_core.digest import digest
from probex_core.hub import parse
from probex_core.hub.records import RepoError, RepoRecord, check_file_size
from probex_core.hub.safetensors_io import ParsedHeader, decode_tensor, header_length, parse_header


class DirectorySource:
    """Shared reader for sources whose repos are directories under one root.

    Every path is resolved and must stay inside `root` (a symlink pointing outside is an
    error, not a file to follow), and only safetensors files are ever opened for weights.
    """

    name = "directory"
    cheap_listing = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root_resolved = self.root.resolve()

    def listing_fingerprint(self) -> str:
        ids = sorted(self.list_repos())
        stats = []
        for repo in ids:
            d = self.root / repo
            if d.is_dir():
                stats.extend(
                    (str(p.relative_to(self.root)), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in sorted(d.iterdir())
                    if p.is_file()
                )
        return digest(ids, stats)

    def _open(self, path: Path) -> BinaryIO:
        """Open a file for reading; one place so tests can count the bytes read."""
        return open(path, "rb")

    def _inside(self, repo_id: str, rel: str, path: Path, strict: bool = True) -> Path:
        try:
            resolved = path.resolve(strict=strict)
        except (OSError, RuntimeError) as e:
            raise RepoError(repo_id, rel, f"cannot resolve path: {e}") from None
        if not resolved.is_relative_to(self._root_resolved):
            raise RepoError(repo_id, rel, "path escapes the hub root (symlink or '..')")
        return resolved

    def _repo_dir(self, repo_id: str, location: str) -> Path:
        parse.validate_rel_path(repo_id, location)
        repo_dir = self._inside(repo_id, "", self.root / location, strict=False)
        if not repo_dir.is_dir():
            raise RepoError(repo_id, "", "repo directory not found")
        return repo_dir

    def _list_files(self, repo_id: str, repo_dir: Path) -> dict[str, int]:
        """Relative path → size for every regular file; escaping symlinks are errors."""
        sizes: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(repo_dir, followlinks=False):
            here = Path(dirpath)
            for d in list(dirnames):
                full = here / d
                if d.startswith(".") or full.is_symlink():
                    if full.is_symlink():
                        self._inside(repo_id, full.relative_to(repo_dir).as_posix(), full, False)
                    dirnames.remove(d)
            dirnames.sort()
            for f in sorted(filenames):
                full = here / f
                rel = full.relative_to(repo_dir).as_posix()
                if full.is_symlink():
                    target = self._inside(repo_id, rel, full, strict=False)
                    if not target.is_file():
                        continue  # dangling link: not a file of this repo
                try:
                    sizes[rel] = full.stat().st_size
                except OSError as e:
                    raise RepoError(repo_id, rel, f"cannot stat: {e}") from None
                if len(sizes) > parse.MAX_FILES:
                    raise RepoError(repo_id, "", f"more than {parse.MAX_FILES} files")
        return sizes

    def _file(self, repo_id: str, repo_dir: Path, rel: str) -> Path:
        parse.validate_rel_path(repo_id, rel)
        path = self._inside(repo_id, rel, repo_dir / rel)
        if not path.is_file():
            raise RepoError(repo_id, rel, "not a regular file")
        return path

    def _read_text(self, repo_id: str, repo_dir: Path, rel: str) -> str:
        path = self._file(repo_id, repo_dir, rel)
        try:
            with self._open(path) as f:
                data = f.read(parse.MAX_TEXT_BYTES + 1)
        except OSError as e:
            raise RepoError(repo_id, rel, f"cannot read: {e}") from None
        return parse.decode_text(repo_id, rel, data)

    def _read_header(self, repo_id: str, repo_dir: Path, rel: str) -> ParsedHeader:
        path = self._file(repo_id, repo_dir, rel)
        try:
            with self._open(path) as f:
                size = os.fstat(f.fileno()).st_size
                n = header_length(f.read(8), repo_id, rel, size)
                header_json = f.read(n)
        except OSError as e:
            raise RepoError(repo_id, rel, f"cannot read: {e}") from None
        if len(header_json) != n:
            raise RepoError(repo_id, rel, "truncated: header shorter than declared")
        return parse_header(header_json, size, repo_id, rel)

    def _crawl_dir(
        self,
        repo_id: str,
        location: str,
        *,
        revision: str | None = None,
        split: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> RepoRecord:
        """Read one repo directory: list files, parse headers, card and config."""
        repo_dir = self._repo_dir(repo_id, location)
        sizes = self._list_files(repo_id, repo_dir)
        weights, kind = parse.choose_weights(repo_id, list(sizes))
        if weights == parse.SHARD_INDEX:
            shards = parse.shard_files(repo_id, self._read_text(repo_id, repo_dir, weights))
        else:
            shards = [weights]
        for s in shards:
            check_file_size(repo_id, s, sizes.get(s, 0))
        headers = {s: self._read_header(repo_id, repo_dir, s) for s in shards}
        versions = {s: self._version(repo_dir / s) for s in shards}
        card_text = (
            self._read_text(repo_id, repo_dir, parse.CARD_FILE)
            if parse.CARD_FILE in sizes
            else None
        )
        config_files = [c for c in parse.CONFIG_FILES if c in sizes]
        if kind == "full":
            config_files = [c for c in config_files if c == "config.json"] or config_files
        config_file = config_files[0] if config_files else None
        config_text = self._read_text(repo_id, repo_dir, config_file) if config_file else None
        return parse.build_record(
            repo_id=repo_id,
            source=self.name,
            kind=kind,
            weights_file=weights,
            files=list(sizes),
            headers=headers,
            sizes=sizes,
            card_text=card_text,
            config_file=config_file,
            config_text=config_text,
            revision=revision,
            split=split,
            location=location,
            extra=extra,
            versions=versions,
        )

    def _version(self, path: Path) -> str:
        """A content version of a weight file: here its mtime (no hash of gigabytes)."""
        return str(path.stat().st_mtime_ns)

    def read_tensors(self, record: RepoRecord, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Seek to each tensor's offsets and read exactly its bytes; nothing else is loaded."""
        if record.source != self.name:
            raise ValueError(f"record from source {record.source!r}, not {self.name!r}")
        repo_dir = self._repo_dir(record.repo_id, record.location)
        by_file: dict[str, list[str]] = {}
        for name in names:
            if name not in record.tensors:
                raise RepoError(record.repo_id, record.weights_file, f"no tensor named {name!r}")
            by_file.setdefault(record.tensors[name].file, []).append(name)
        out: dict[str, torch.Tensor] = {}
        for rel, wanted in by_file.items():
            path = self._file(record.repo_id, repo_dir, rel)
            try:
                with self._open(path) as f:
                    size = os.fstat(f.fileno()).st_size
                    for name in wanted:
                        info = record.tensors[name]
                        if info.end > size:
                            raise RepoError(
                                record.repo_id, rel, "file shrank since the crawl (truncated)"
                            )
                        f.seek(info.start)
                        out[name] = decode_tensor(info, f.read(info.end - info.start))
            except OSError as e:
                raise RepoError(record.repo_id, rel, f"cannot read: {e}") from None
        return out


class LocalHubSource(DirectorySource):
    """A hub directory `ROOT/<org>/<name>/` in Hugging Face repo layout (the built-in zoo)."""

    name = "local"

    def list_repos(self) -> Iterator[str]:
        """Every `<org>/<name>` directory; hidden entries skipped, bad names left to crawl."""
        if not self.root.is_dir():
            return
        for org in sorted(self.root.iterdir()):
            if org.name.startswith(".") or not org.is_dir():
                continue
            for repo in sorted(org.iterdir()):
                if not repo.name.startswith(".") and repo.is_dir():
                    yield f"{org.name}/{repo.name}"

    def crawl(self, repo_id: str) -> RepoRecord:
        parse.validate_repo_id(repo_id)
        return self._crawl_dir(repo_id, repo_id)
