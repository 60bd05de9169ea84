"""Homes at an fsspec URL (`PROBEX_HOME=s3://bucket/probex`, `memory://…`, any fsspec
protocol whose package is installed): a local mirror, written through, pulled on open.

Every library probex uses reads and writes local files (safetensors, DuckDB, Dagster's
SQLite), so a remote home is worked on in a local mirror under the cache
(`$PROBEX_CACHE/homes/<digest of the URL>`, default `~/.cache/probex`):
- opening the home pulls what changed at the URL since this mirror last saw it (by fsspec's
  `ukey`: an object's ETag on S3) and drops mirrored files the URL no longer has;
- every file probex writes goes through `files.atomic_path`, which hands it here once it is
  complete: on object stores one PUT, which readers see whole or not at all; elsewhere a
  temp object then a move. A killed writer leaves no part at the URL;
- a removal (`files.remove`) removes the object too.
Per-machine files stay local: the Dagster instance, the DuckDB file of views (rebuilt from
the pulled Parquet parts by `refresh_views`) and generated zoos.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from probex_core.digest import digest
from probex_core.env import cache_root
from probex_core.errors import UserError

LOCAL_ONLY = ("dagster", "catalog.duckdb", ".pulled.json")  # first path parts never synced
# (a file pulled once and removed at the URL later is removed here by the next pull; a file
# this mirror wrote itself was pushed when written)
LOCAL_PREFIXES = ("zoo-", "catalog.duckdb")
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}  # a PUT is all or nothing


# mirror → (its filesystem, the home's path on it), for every home at a URL this process opened
_REMOTES: dict[Path, tuple[Any, str]] = {}


def is_remote(spec: str) -> bool:
    """A URL with a scheme other than file:// (which is a local path)."""
    return "://" in spec and not spec.startswith("file://")


def open_remote(url: str) -> Path:
    """The local mirror of the home at `url`, registered for write-through and pulled."""
    import fsspec

    try:
        fs, base = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # a protocol without its package, or unknown
        raise UserError(f"home {url}: cannot open it: {e}") from None
    mirror = (cache_root() / "homes" / digest(url)).resolve()
    _REMOTES[mirror] = (fs, base.rstrip("/"))
    mirror.mkdir(parents=True, exist_ok=True)
    pull(mirror)
    return mirror


def _local_only(rel: str) -> bool:
    first = rel.split("/", 1)[0]
    return first in LOCAL_ONLY or first.startswith(LOCAL_PREFIXES) or rel.endswith(".tmp")


def _target(path: Path) -> tuple[Any, str] | None:
    """(filesystem, object path) of a mirrored file at its home's URL; None for a file of no
    remote home, or one kept local."""
    if not _REMOTES:
        return None
    path = Path(path).resolve()
    for mirror, (fs, base) in _REMOTES.items():
        if path.is_relative_to(mirror):
            rel = path.relative_to(mirror).as_posix()
            return None if _local_only(rel) else (fs, f"{base}/{rel}")
    return None


def pull(mirror: Path) -> None:
    """Bring a mirror up to date with its URL: fetch what changed, drop what is gone."""
    fs, base = _REMOTES[mirror]
    seen_path = mirror / ".pulled.json"
    seen = json.loads(seen_path.read_text()) if seen_path.is_file() else {}
    fs.invalidate_cache(base)  # what other machines wrote since this process last listed
    found = fs.find(base, detail=True) if fs.exists(base) else {}
    now = {}
    for name, info in found.items():
        if info.get("type") != "file":
            continue
        rel = name[len(base) :].lstrip("/")
        if _local_only(rel):
            continue
        key = _version(info)
        now[rel] = key
        local = mirror / rel
        if seen.get(rel) != key or not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
            fs.get_file(name, str(tmp))
            os.replace(tmp, local)
    for rel in set(seen) - set(now):  # removed at the URL since the last pull
        (mirror / rel).unlink(missing_ok=True)
    tmp = seen_path.with_name(f".pulled.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(now))
    os.replace(tmp, seen_path)  # processes sharing this mirror may pull at once


def _version(info: dict) -> str:
    """An object's version from its listing (no request of its own): ETag, else times."""
    for field in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "created"):
        if info.get(field) is not None:
            return f"{info[field]}:{info.get('size')}"
    return f"?:{info.get('size')}"


def pushed(path: Path) -> None:
    """`path` (complete, in a mirror) is written to its URL: whole or not at all."""
    found = _target(path)
    if found is None:
        return
    fs, target = found
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & ATOMIC_PUT:
        fs.put_file(str(path), target)
    else:
        tmp = f"{target}.{uuid.uuid4().hex}.tmp"
        fs.put_file(str(path), tmp)
        fs.mv(tmp, target)


def removed(path: Path) -> None:
    """`path` (in a mirror) was deleted: delete its object too."""
    found = _target(path)
    if found is not None and found[0].exists(found[1]):
        found[0].rm(found[1])
