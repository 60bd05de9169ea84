"""Where probex writes and which hub it reads: every environment variable and default of the
two, decided here and nowhere else.

- The home: an explicit directory, else `$PROBEX_HOME`, else `./.probex` (a path, a
  `file://` URL, or any fsspec URL: `storage`).
- The hub: an explicit spec, else `$PROBEX_HUB`; without either, each caller says what it
  falls back to — `probex run` and the Dagster resources to the embedded zoo generated under
  the home (`default_zoo_hub`), `probex predict` and `probex ui` to the hub the last run read.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from probex_core.errors import UserError

HOME_VAR = "PROBEX_HOME"
HUB_VAR = "PROBEX_HUB"
CACHE_VAR = "PROBEX_CACHE"
DEFAULT_HOME = ".probex"
DEFAULT_ZOO = "default"


def home_root(explicit: str | Path | None = None) -> str | Path:
    """The home: `explicit`, else $PROBEX_HOME, else ./.probex. A directory comes back
    resolved (a `file://` URL is its path: a local disk or a shared mount that every worker
    sees); any other URL comes back as given, for `storage` to mirror."""
    given = str(explicit or os.environ.get(HOME_VAR) or DEFAULT_HOME)
    url = urlsplit(given)
    if "://" in given and url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise UserError(f"home {given}: a file:// URL names no host (file:///path)")
        given = unquote(url.path)
    elif "://" in given:
        return given
    return Path(given).expanduser().resolve()


def cache_root() -> Path:
    """Where the local mirrors of homes at a URL live: $PROBEX_CACHE, else ~/.cache/probex."""
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "probex").expanduser()


def hub_from_env(explicit: str | None = None) -> str | None:
    """The hub a user asked for: `explicit`, else $PROBEX_HUB; None when neither is set."""
    return explicit or os.environ.get(HUB_VAR) or None


def zoo_dir(home: Path, preset: str = DEFAULT_ZOO) -> Path:
    """Where the embedded zoo of a preset is generated under a home (hub/ + manifest.json)."""
    return Path(home) / f"zoo-{preset}"


def default_zoo_hub(home: Path, preset: str = DEFAULT_ZOO) -> Path:
    """The hub of the embedded zoo under a home."""
    return zoo_dir(home, preset) / "hub"


def zoo_manifest_path(hub: str | Path) -> Path | None:
    """A zoo's manifest.json (its ground truth) for a local hub: inside the folder given as
    the hub (`probex zoo generate --out DIR`, then `--hub DIR`) or beside its `hub/`; None
    for a remote or cache spec (hf:, hf-cache:, modelj:) or a hub without one."""
    if ":" in str(hub).split("/")[0]:
        return None
    path = Path(hub).expanduser()
    for candidate in (path / "manifest.json", path.parent / "manifest.json"):
        if candidate.is_file():
            return candidate
    return None
