"""Step 1: crawl the hub (headers, cards, configs) into the `repos` and `rejected` tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from probex_core.catalog import Home, write_table
from probex_core.digest import digest
from probex_core.files import atomic_write_json
from probex_core.hub import HubSource, Rejected, RepoRecord, TensorInfo, crawl_all
from probex_core.pipeline.common import Progress, StepReport, Ticker
from probex_core.schemas import frame

CRAWL_PART, WEIGHTS_PART = "all", "weights"  # parts of the `rejected` table (+ layers-<tree>)


def records_path(home: Home) -> Path:
    return home.artifacts / "records.json"


def _record_to_json(r: RepoRecord) -> dict:
    d = dataclasses.asdict(r)
    d["tensors"] = {n: dataclasses.asdict(t) for n, t in r.tensors.items()}
    return d


def _record_from_json(d: dict) -> RepoRecord:
    d = dict(d)
    d["tensors"] = {
        n: TensorInfo(**{**t, "shape": tuple(t["shape"])}) for n, t in d["tensors"].items()
    }
    for key in ("files", "base_model"):
        d[key] = tuple(d[key])
    for key in ("training_classes", "withheld_classes"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return RepoRecord(**d)


def load_records(home: Home) -> dict[str, RepoRecord]:
    """The crawled records by repo id (tensor index included), as the last crawl saw them."""
    path = records_path(home)
    if not path.is_file():
        raise FileNotFoundError(f"no crawl yet: {path} is missing (materialise hub_repos)")
    return {d["repo_id"]: _record_from_json(d) for d in json.loads(path.read_text())}


def _n_params(r: RepoRecord) -> int:
    total = 0
    for t in r.tensors.values():
        n = 1
        for s in t.shape:
            n *= s
        total += n
    return total


def crawl(home: Home, source: HubSource, progress: Progress | None = None) -> StepReport:
    tick = Ticker(progress)
    # before the crawl, so a change during it shows; directory hubs only (a Hub API listing
    # is a network crawl of its own)
    listing = source.listing_fingerprint() if source.cheap_listing else None
    records, rejected = crawl_all(
        source, on_repo=lambda n, bad: tick(f"crawled {n:,} repos ({bad:,} rejected)")
    )
    records.sort(key=lambda r: r.repo_id)
    atomic_write_json(records_path(home), [_record_to_json(r) for r in records])
    if listing is not None:
        atomic_write_json(home.artifacts / "listing.json", {"fingerprint": listing})
    rows = [
        {
            "repo_id": r.repo_id,
            "source": r.source,
            "kind": r.kind,
            "weights_file": r.weights_file,
            "signature": r.signature,
            "fingerprint": r.fingerprint,
            "documented": r.documented,
            "base_model": r.base_model[0] if r.base_model else None,
            "base_model_relation": r.base_model_relation,
            "training_classes": list(r.training_classes) if r.training_classes else None,
            "n_tensors": len(r.tensors),
            "n_params": _n_params(r),
            "split": r.split,
            "withheld_classes": list(r.withheld_classes) if r.withheld_classes else None,
        }
        for r in records
    ]
    repos = frame(rows, "repos")
    write_table(home, "repos", repos)
    rej = write_rejected(home, CRAWL_PART, "crawl", rejected)
    kinds = repos.groupby("kind").size().to_dict() if len(repos) else {}
    return StepReport(
        summary={
            "repos": len(records),
            "rejected": len(rejected),
            "documented": int(repos.documented.sum()) if len(repos) else 0,
            "signatures": int(repos.signature.nunique()) if len(repos) else 0,
            **{f"kind_{k}": int(v) for k, v in kinds.items()},
        },
        tables={
            "rejected_repos": rej,
            "sample": repos.drop(columns=["training_classes", "withheld_classes"]).head(10),
        },
        data_version=digest(sorted(r.fingerprint for r in records)),
    )


def layers_part(tree_id: str) -> str:
    """The `rejected` table part holding one tree's layer-stage rejections."""
    return f"layers-{tree_id}"


def write_rejected(home: Home, part: str, stage: str, rejected: list[Rejected]) -> pd.DataFrame:
    """One stage's rejections as a part of the `rejected` table (rewritten, possibly empty,
    on every run of that stage, so a repaired repo leaves the list)."""
    rows = [{**dataclasses.asdict(x), "stage": stage} for x in rejected]
    rej = frame(sorted(rows, key=lambda d: d["repo_id"]), "rejected")
    write_table(home, "rejected", rej, part=part)
    return rej


def crawled_listing(home: Home) -> str | None:
    """The hub listing fingerprint the last crawl saw (None before the first crawl)."""
    path = home.artifacts / "listing.json"
    return json.loads(path.read_text())["fingerprint"] if path.is_file() else None
