"""One short content hash for versions, fingerprints and run keys."""

from __future__ import annotations

import hashlib
import json


def digest(*parts: object) -> str:
    """16 hex digits of sha256 over each part's sorted-key JSON (str() for other objects)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
