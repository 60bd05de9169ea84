"""Resources: where probex writes (its home) and which hub it reads (defaults: probex_core.env).

They live beside the assets that use them, so orchestration imports assets and never the
other way round."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from probex_core.catalog import Home
from probex_core.env import default_zoo_hub, home_root, hub_from_env, zoo_manifest_path


def default_home() -> str:
    return str(home_root())


def default_hub() -> str:
    """PROBEX_HUB, else the embedded zoo that `probex run` generates under the home."""
    return hub_from_env() or str(default_zoo_hub(Home.from_env().root))


class ProbexHome(dg.ConfigurableResource):
    """The directory that holds the catalog, the tables and every artifact."""

    root: str = Field(default_factory=default_home, description="PROBEX_HOME directory")

    def get(self) -> Home:
        return Home(self.root)


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
        return zoo_manifest_path(self.spec)


def make_resources(home: str | None = None, hub: str | None = None) -> dict:
    return {
        "probex_home": ProbexHome(root=home or default_home()),
        "hub": HubSourceResource(spec=hub or default_hub()),
    }
