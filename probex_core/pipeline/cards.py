"""Step 7: the documentation a hub lacks, written back as Hugging Face model cards.

For every undocumented member of a tree (and, on request, every documented one whose declared
base the weights contradict), a card under `$PROBEX_HOME/cards/<org>/<name>/README.md`
(`probex_core.cards`: which classes it lists, what it says). A hub's own card is never
touched. A card is rewritten only when its content changes: the content carries the tree's
expert version (a digest of its `meta.json`), so a rebuilt expert refreshes exactly its
tree's cards; cards of models that no longer get one are removed.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pandas as pd

from probex_core.cards import CARD_FILE, Listing, ModelFacts, TreeFacts, render_card, tree_listings
from probex_core.catalog import Home, read_table, refresh_views, write_table
from probex_core.digest import digest
from probex_core.errors import UserError
from probex_core.files import atomic_path, atomic_write_bytes, remove
from probex_core.pipeline.common import StepReport
from probex_core.schemas import frame
from probex_core.store import ExpertMeta, TreeExperts

# YAML quotes a digest of decimal digits only: read it back without the quotes
_DIGEST_LINE = re.compile(r"^  content_digest: '?([0-9a-f]+)'?$", re.MULTILINE)


def expert_accuracy(rows: pd.DataFrame, meta: ExpertMeta) -> dict | None:
    """The expert's measured accuracy with its chance, from `evaluation_rows`: on test models
    when the evaluations have ground truth, else on its validation models."""
    metric = "top1" if meta.single_label else "per_class_accuracy"
    for split, name in (("test", metric), ("val", f"val_{metric}")):
        hit = rows[(rows.tree_id == meta.tree_id) & (rows.method == "probex")
                   & (rows.metric == name) & (rows.split == split)]  # fmt: skip
        if len(hit):
            r = hit.iloc[0]
            chance = None if pd.isna(r.chance) else round(float(r.chance), 3)
            return {"metric": metric, "value": round(float(r.value), 3), "chance": chance,
                    "split": split, "n": int(r.n)}  # fmt: skip
    return None


def _tree_facts(home: Home, summary: pd.DataFrame, listings: dict[str, Listing]) -> dict:
    try:
        scores = read_table(home, "evaluation_rows")
    except FileNotFoundError:
        scores = pd.DataFrame(columns=["tree_id", "method", "metric", "split"])
    facts = {}
    for r in summary.itertuples():
        experts = TreeExperts(home, r.tree_id)
        meta = experts.meta() if experts.exists() else None
        skipped = "not trained yet" if meta is None else meta.skipped
        usable = meta if meta is not None and not meta.skipped else None
        facts[r.tree_id] = TreeFacts(
            tree_id=r.tree_id,
            name=r.root_repo,
            size=int(r.size),
            kind=r.kind,
            meta=usable,
            expert_version=digest(experts.meta_path.read_text()) if usable else None,
            no_expert=None if usable else skipped,
            listing=listings.get(r.tree_id) if usable else None,
            accuracy=expert_accuracy(scores, usable) if usable else None,
        )
    return facts


def _models(
    home: Home, preds: pd.DataFrame, repos: pd.DataFrame, contradicted: bool
) -> list[tuple[ModelFacts, str]]:
    """(facts, tree id) of every model that gets a card: the undocumented members of a tree,
    and with `contradicted` the documented ones whose declared base the weights contradict."""
    members = read_table(home, "tree_members").set_index("repo_id")
    routes = read_table(home, "routes").set_index("repo_id")
    disagree = read_table(home, "card_disagreements").set_index("repo_id").declared_base
    probs: dict[str, dict[str, float]] = {}
    for rid, cls, p in zip(preds.repo_id, preds.class_name, preds.probability, strict=True):
        probs.setdefault(rid, {})[cls] = float(p)
    out = []
    for rid, m in members.iterrows():
        documented = bool(repos.at[rid, "documented"]) if rid in repos.index else False
        if documented and not (contradicted and rid in disagree.index):
            continue
        route = routes.loc[rid] if rid in routes.index else None
        routed = None if route is None or pd.isna(route.routed_tree) else route.routed_tree
        model = ModelFacts(
            repo_id=rid,
            parent=None if pd.isna(m.parent) else m.parent,
            routed_tree=routed,
            route_reason=None if route is None or pd.isna(route.reason) else route.reason,
            documented=documented,
            declared_base=disagree.get(rid) if documented else None,
            probs=probs.get(rid, {}),
        )
        out.append((model, m.tree_id))
    return out


def build_cards(home: Home, contradicted: bool = False, today: str | None = None) -> StepReport:
    """Write (or keep) the card of every model that gets one; remove the cards of models that
    no longer get one; record them in the `model_cards` table."""
    try:
        summary = read_table(home, "tree_summary")
        preds = read_table(home, "predictions_long")
        repos = read_table(home, "repos").set_index("repo_id")
        models = _models(home, preds, repos, contradicted)
    except FileNotFoundError as e:
        raise UserError(
            f"no predictions in {home.root} to write cards from ({e}); run `probex run` first"
        ) from e
    today = today or dt.date.today().isoformat()
    trees = _tree_facts(home, summary, tree_listings(home, preds, repos))
    root = home.cards
    rows, written, kept = [], 0, 0
    for model, tree_id in models:
        text, row = render_card(model, trees[tree_id], len(trees), today)
        path = root / model.repo_id / CARD_FILE
        row["path"] = str(path.relative_to(root))
        rows.append(row)
        if _existing_digest(path) == row["content_digest"]:
            kept += 1
            continue
        atomic_write_bytes(path, text.encode())
        written += 1
    removed = _remove_others(root, {r["path"] for r in rows})
    df = frame(rows, "model_cards")
    write_table(home, "model_cards", df)
    refresh_views(home)
    return StepReport(
        summary={
            "cards": len(rows),
            "written": written,
            "unchanged": kept,
            "removed": removed,
            "listing_some_class": int(sum(len(r["listed_classes"]) > 0 for r in rows)),
            "cards_dir": str(root),
        },
        tables={"cards": df.drop(columns=["content_digest"]).head(30)},
        data_version=digest(sorted(r["content_digest"] for r in rows)),
    )


def _existing_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    found = _DIGEST_LINE.search(path.read_text(errors="replace"))
    return found.group(1) if found else None


def _remove_others(root: Path, keep: set[str]) -> int:
    """Delete generated cards no model gets any more (a model gone from the hub, ...)."""
    n = 0
    for path in root.rglob(CARD_FILE) if root.is_dir() else []:
        if str(path.relative_to(root)) not in keep:
            remove(path)
            n += 1
    return n


def export_cards(home: Home, out: Path) -> int:
    """Copy every card of the `model_cards` table to `out/<org>/<name>/README.md`."""
    root, n = home.cards, 0
    for rel in read_table(home, "model_cards").path:
        with atomic_path(out / rel) as tmp:
            shutil.copyfile(root / rel, tmp)
        n += 1
    return n
