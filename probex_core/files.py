"""The one way probex writes a file: atomically, through a temp file beside the target.

A reader sees the old file or the new one, never half of one; a killed writer leaves at most a
`.<name>.*.tmp` beside its target, which `catalog.sweep_partial_files` removes before the next
run. For a home at a URL (`storage`), the complete file is then written there too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from probex_core import storage


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` to write to (by any library); on a clean exit it replaces
    `path` (fsynced), on an error it is removed and the error goes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        storage.pushed(path)  # a home at a URL: the complete file goes there too
    finally:
        tmp.unlink(missing_ok=True)


def remove(path: str | Path) -> None:
    """Delete a file probex wrote (and its object, for a home at a URL)."""
    Path(path).unlink(missing_ok=True)
    storage.removed(Path(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: object, indent: int = 1) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent, sort_keys=True).encode())
