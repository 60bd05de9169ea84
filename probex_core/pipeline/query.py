"""What users ask of a built catalog: text search over models, and one model's prediction."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import torch

from probex_core.canon import assemble_layer, find_layers
from probex_core.catalog import Home, load_sql, query, read_table
from probex_core.env import hub_from_env
from probex_core.errors import UserError
from probex_core.hub import LocalHubSource, RepoError, RepoRecord, make_source
from probex_core.pipeline.labels import is_list, text_encoder
from probex_core.pipeline.layers import (
    layer_transform,
    nearest_reference,
)
from probex_core.pipeline.predict import text_space
from probex_core.pipeline.recover import weight_records
from probex_core.store import TreeExperts, TreeLayers
from probex_core.text import class_prompt, class_prompts
from probex_core.train import Calibration, predict_proba
from probex_core.zeroshot import cosine_scores

# A text names a class a tree's expert knows when its prompt's embedding lies this close to
# that class's prompt. With MiniLM on the zoo's names: distinct class names reach at most
# 0.888 ("a photo of a red star" against another colour-shape pair); the same name written
# "Red Star", "a red star", "red stars" or "red star shape" reaches 0.935-1.0.
KNOWN_CLASS_COSINE = 0.92


class TextSearch:
    """Text search over a catalog's models: one ranking of every tree's models by the
    log-probability their experts give the text, best first — in SQL, no weight is re-read.

    The text is encoded as the experts' class texts are (`class_prompt`). A tree whose
    expert knows the text as one of its classes ranks its models by that class's calibrated
    classifier probability (`sql/search_known.sql`); every other tree by its zero-shot
    expert, ln u + log σ(s · cosine − o): how many of the model's classes its classifier
    does not find, times the probability that one of them is the text against the classes
    the tree knows (`sql/search_models.sql`). Both are logs of the expected number of the
    model's classes that are the text, so the trees share one ranking.
    """

    def __init__(self, home: Home) -> None:
        stored = query(home, "SELECT DISTINCT tree_id, encoder FROM embeddings")
        if stored.empty:
            raise UserError("the catalog has no model embeddings yet; run `probex run` first")
        if stored.encoder.nunique() > 1:
            raise UserError(f"embeddings from several encoders: {sorted(stored.encoder.unique())}")
        self.home, self.encoder_name = home, stored.encoder.iloc[0]
        self.trees = set(stored.tree_id)
        self.sql = {name: load_sql(name) for name in ("search_models", "search_known")}
        metas = {t: TreeExperts(home, t).meta() for t in sorted(stored.tree_id)}
        self.encoder = text_encoder(home, next(iter(metas.values())).encoder)
        self.classes = {t: list(m.classes) for t, m in metas.items() if m.classes}
        self.class_texts = {
            t: self.encoder.encode(class_prompts(c)) for t, c in self.classes.items()
        }

    def known_classes(self, vec: torch.Tensor, tree: str | None) -> dict[str, str]:
        """{tree id: its class} for each tree whose expert knows the text as a class."""
        known = {}
        for t, texts in self.class_texts.items():
            sims = texts @ vec
            if (tree is None or t == tree) and float(sims.max()) >= KNOWN_CLASS_COSINE:
                known[t] = self.classes[t][int(sims.argmax())]
        return known

    def search(self, text: str, k: int | None = 10, tree: str | None = None) -> pd.DataFrame:
        """The k (None: all) best models for `text`: repo_id, tree_id, score, cosine,
        documented, known_class (the class the classifier answered for; empty: zero-shot)."""
        if tree is not None:
            tree = resolve_tree(self.home, tree, self.trees)
        vec = self.encoder.encode([class_prompt(text)])[0]
        known = self.known_classes(vec, tree)
        q = vec.tolist()
        try:
            hits = query(
                self.home,
                self.sql["search_models"],
                [q, self.encoder_name, tree, tree, list(known), k],
            )
        except duckdb.BinderException as e:
            raise UserError(
                f"the catalog {self.home.catalog_path} was built by an older probex and has no "
                "search calibration columns; run `probex run` once to refresh it"
            ) from e
        hits["known_class"] = ""
        if known:
            by_class = query(
                self.home,
                self.sql["search_known"],
                [q, list(known), list(known.values()), self.encoder_name, tree, tree, k],
            )
            hits = pd.concat([by_class, hits], ignore_index=True)
            hits = hits.sort_values(["score", "repo_id"], ascending=[False, True], kind="stable")
        return hits.head(len(hits) if k is None else k).reset_index(drop=True)


def search_catalog(home: Home, text: str, k: int = 10, tree: str | None = None) -> pd.DataFrame:
    """Rank every tree's models for `text` (`TextSearch`)."""
    return TextSearch(home).search(text, k, tree)


def resolve_tree(home: Home, tree: str, among: set[str]) -> str:
    """A tree asked for by id (tree-1a2b…) or by name (its root repo) → its id in `among`;
    a UserError listing the names there are otherwise."""
    trees = query(home, "SELECT tree_id, name FROM trees")
    by_name = {n: t for t, n in zip(trees.tree_id, trees.name, strict=True) if t in among}
    if tree in among:
        return tree
    if tree in by_name:
        return by_name[tree]
    known = ", ".join(f"{n} ({t})" for n, t in sorted(by_name.items()))
    raise UserError(f"unknown tree {tree!r}; trees with embeddings: {known}")


@dataclass
class Prediction:
    repo_id: str
    tree_id: str | None
    route_reason: str
    distance: float
    classes: list[tuple[str, float]] = field(default_factory=list)
    labels: list[tuple[str, float]] = field(default_factory=list)
    tree_name: str | None = None  # the tree's root repo

    def render(self) -> str:
        lines = [f"model: {self.repo_id}"]
        if self.tree_id is None:
            lines.append(f"tree:  unknown tree ({self.route_reason}; distance {self.distance:.3g})")
            return "\n".join(lines)
        name = f"{self.tree_name} ({self.tree_id}" if self.tree_name else f"{self.tree_id} ("
        lines.append(f"tree:  {name}, distance {self.distance:.3g})")
        if not self.classes:
            lines.append(f"no prediction: {self.route_reason}")
            return "\n".join(lines)
        lines.append("predicted training classes:")
        lines += [f"  {p:6.3f}  {c}" for c, p in self.classes]
        lines.append("nearest text labels (weight-language space):")
        lines += [f"  {s:6.3f}  {c}" for c, s in self.labels]
        return "\n".join(lines)


def _resolve(home: Home, target: str, hub: str | None) -> tuple[object, RepoRecord]:
    path = Path(target)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        source = LocalHubSource(path.parent.parent)
        repo_id = f"{path.parent.name}/{path.name}"
        return source, source.crawl(repo_id)
    hub = hub_from_env(hub) or last_run_hub(home)
    if hub is None:
        raise UserError(
            f"{target!r} is neither a file nor a directory, and no hub to look it up in: "
            "pass --hub, or run `probex run` first"
        )
    source = make_source(hub)
    return source, source.crawl(target)


def last_run(home: Home) -> dict:
    """What the last `probex run` on this home recorded (its run.json: the hub, and the hub's
    layout as the run described it), or {}."""
    path = home.root / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def last_run_hub(home: Home) -> str | None:
    """The hub the last `probex run` on this home read, if any."""
    return last_run(home).get("hub")


def predict_one(home: Home, target: str, hub: str | None = None, top: int = 5) -> Prediction:
    """Route one model (seen or never seen) to a tree, then ask that tree's experts."""
    from probex_core.router import Router

    source, record = _resolve(home, target, hub)
    router = Router.load(home.artifacts / "router")
    wrecs, rejected = weight_records(source, {record.repo_id: record})
    if rejected:
        raise RepoError(rejected[0].repo_id, rejected[0].path, rejected[0].reason)
    wrec = wrecs[0]
    res = router.route(wrec)
    pred = Prediction(
        record.repo_id, res.tree_id, getattr(res, "reason", "") or "", float(res.distance)
    )
    if res.tree_id is None:
        return pred
    names = query(home, "SELECT name FROM trees WHERE tree_id = ?", [res.tree_id]).name
    pred.tree_name = names.iloc[0] if len(names) else None
    experts, layers = TreeExperts(home, res.tree_id), TreeLayers(home, res.tree_id)
    meta = experts.meta()
    if meta.skipped:
        pred.route_reason = f"its tree has no expert ({meta.skipped})"
        return pred
    specs = find_layers(record.tensor_shapes())
    spec = specs.get(meta.layer)
    if spec is None:
        pred.route_reason = f"model lacks the expert's layer {meta.layer}"
        return pred
    members = layers.index()["repo_ids"]
    if record.repo_id in members:  # a member: its layer as the experts read it
        X = layers.read(meta.layer, [members.index(record.repo_id)])
    else:  # never seen: measured from the nearest of the tree's references
        X = assemble_layer(spec, source.read_tensors(record, spec.tensors))[None]
        refs = layers.reference(meta.layer)
        X = layer_transform(X, None if refs is None else nearest_reference(X, refs))
    clf, _ = experts.load("probex", meta)
    zs, _ = experts.load("zeroshot", meta)
    probs = predict_proba(clf, X, calibration=Calibration.from_meta(meta, "probex"))[0]
    order = torch.argsort(probs, descending=True)[:top]
    pred.classes = [(meta.classes[i], float(probs[i])) for i in order]
    vocab = sorted(
        {c for cs in read_table(home, "repos").training_classes if is_list(cs) for c in cs}
    )
    T = text_encoder(home, meta.encoder).encode(class_prompts(vocab))
    sims = cosine_scores(text_space(zs, X), T)[0]
    order = torch.argsort(sims, descending=True)[:top]
    pred.labels = [(vocab[i], float(sims[i])) for i in order]
    return pred
