"""Resources: where probex writes (its home) and which hub it reads. Chosen in one place."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from probex_core.catalog import Home


def default_home() -> str:
    return str(Path(os.environ.get("PROBEX_HOME", ".probex")).resolve())


def default_hub() -> str:
    """PROBEX_HUB, else the embedded zoo that `probex run` generates under the home."""
    return os.environ.get("PROBEX_HUB") or str(Path(default_home()) / "zoo-default" / "hub")


class ProbexHome(dg.ConfigurableResource):
    """The directory that holds the catalog, the tables and every artifact."""

    root: str = Field(default_factory=default_home, description="PROBEX_HOME directory")

    def get(self) -> Home:
        return Home(Path(self.root))


class HubSourceResource(dg.ConfigurableResource):
    """The hub to crawl: a local directory, `hf-cache:DIR`, or `hf:ENDPOINT?…` (see hub.make_source)."""

    spec: str = Field(default_factory=default_hub, description="hub source spec")
    ground_truth: str | None = Field(
        default=None,
        description="manifest.json with ground truth for evaluation only; default: the zoo's own",
    )

    def source(self):
        from probex_core.hub import make_source

        return make_source(self.spec)

    def manifest_path(self) -> Path | None:
        """The ground truth given, else a zoo's manifest.json: inside the folder given as the
        hub (`probex zoo generate --out DIR`, then `--hub DIR`) or beside its `hub/`."""
        if self.ground_truth:
            return Path(self.ground_truth)
        if ":" in self.spec.split("/")[0]:  # hf-cache:, hf:, modelj: hold no zoo manifest
            return None
        hub = Path(self.spec).expanduser()
        for candidate in (hub / "manifest.json", hub.parent / "manifest.json"):
            if candidate.is_file():
                return candidate
        return None


def make_resources(home: str | None = None, hub: str | None = None) -> dict:
    return {
        "probex_home": ProbexHome(root=home or default_home()),
        "hub": HubSourceResource(spec=hub or default_hub()),
    }
