"""Text → model search: rank stored model embeddings by cosine similarity to a text vector.

Each model's embedding lives in the shared weight-language space (the zero-shot head maps
weights there), and is computed once when its prediction is materialised; searching never
re-reads weights. Two routes to the same ranking, which `probex bench search` times beside
faiss's exact, IVF and HNSW indexes (approximate search is faiss's job, not ours):
- SQL: `SEARCH_MODELS_SQL` over the catalog's `embeddings` view — what `probex search` runs.
- `SearchIndex`: exact in memory — one normalised matmul plus `argpartition`; a few
  milliseconds at 100 k × 384.

Calibration. Each tree's zero-shot expert scores texts on its own scale, and one tree's
embeddings can sit closer to every text than another's (on the default zoo the LoRA tree won
every query by raw cosine). So each model carries a scale s (its expert's logit scale) and an
offset o (the log-sum-exp of s · cosine over the texts of the classes its tree was trained
on); a model's score for a text is s · cosine − o, the log-odds its expert gives that text
against what it knows. Without calibration values the score is the plain cosine. The SQL
returns ln u + log σ(s · cosine − o) instead (u the model's unknown-class mass, see
sql/search_models.sql; comparable with the classifier's log-probability that `probex search`
uses for trees that know the text as a class). Rows without u (NULL, as the bench's) take
u = 1: the same ranking as here.

Indexes save to one safetensors file (vectors and list layout) whose metadata holds the repo
ids, tree ids and documented flags as JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.numpy import load_file, save

from probex_core.catalog import load_sql
from probex_core.files import atomic_write_bytes

# Ranks the catalog's `embeddings` view (repo_id, tree_id, encoder, embedding FLOAT[],
# documented) by cosine similarity to a bound text vector. Parameters, in order: the text
# vector (FLOAT[]), the encoder name, the tree id twice (NULL for all trees), k.
SEARCH_MODELS_SQL = load_sql("search_models")  # one statement, shared with `probex search`


class SearchHit(NamedTuple):
    """One ranked model."""

    repo_id: str
    tree_id: str | None
    score: float  # scale · cosine − offset (plain cosine when built without calibration)
    documented: bool | None  # None when the index was built without documented flags


def _as_matrix(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, best first (ties: lower position first)."""
    if k <= 0 or scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    if k < scores.size:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))]


class SearchIndex:
    """Exact cosine search over model embeddings (N, D), optionally restricted to one tree.

    Rows are stored grouped by tree, so a tree filter is a contiguous slice, not a gather.
    """

    kind = "exact"

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        repo_ids: Sequence[str],
        tree_ids: Sequence[str | None] | None = None,
        documented: Sequence[bool] | None = None,
        scales: Sequence[float] | np.ndarray | None = None,
        offsets: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        emb = _normalise_rows(_as_matrix(embeddings))
        n = emb.shape[0]
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got {emb.shape}")
        trees = list(tree_ids) if tree_ids is not None else [None] * n
        docs = list(documented) if documented is not None else None
        if len(repo_ids) != n or len(trees) != n or (docs is not None and len(docs) != n):
            raise ValueError("embeddings, repo_ids, tree_ids and documented differ in length")
        if len(set(repo_ids)) != n:
            raise ValueError("repo_ids must be unique")
        calib = _calibration(scales, offsets, n)
        tree_key = np.array(["" if t is None else str(t) for t in trees])
        order = np.argsort(tree_key, kind="stable") if n else np.zeros(0, dtype=np.int64)
        self._set(
            emb[order],
            [repo_ids[i] for i in order],
            [trees[i] for i in order],
            None if docs is None else [bool(docs[i]) for i in order],
            calib[:, order],
        )

    def _set(
        self,
        emb: np.ndarray,
        repo_ids: list[str],
        tree_ids: list[str | None],
        documented: list[bool] | None,
        calib: np.ndarray | None = None,
    ) -> None:
        """Adopt arrays already in stored order (also the load path: no re-sorting)."""
        self._emb = np.ascontiguousarray(emb, dtype=np.float32)
        # (2, N): per-row scale and offset of the score, scale · cosine − offset
        calib = _calibration(None, None, len(emb)) if calib is None else calib
        self._calib = np.ascontiguousarray(calib, dtype=np.float32)  # safetensors needs C order
        self.repo_ids = repo_ids
        self.tree_ids = tree_ids
        self.documented = documented
        self._tree_rows: dict[str | None, np.ndarray] = {}
        for i, t in enumerate(tree_ids):
            self._tree_rows.setdefault(t, []).append(i)  # type: ignore[arg-type]
        self._tree_rows = {t: np.asarray(r, dtype=np.int64) for t, r in self._tree_rows.items()}

    def __len__(self) -> int:
        return self._emb.shape[0]

    @property
    def dim(self) -> int:
        return self._emb.shape[1]

    @property
    def trees(self) -> list[str | None]:
        return list(self._tree_rows)

    def _query(self, text_vec: np.ndarray | torch.Tensor) -> np.ndarray:
        q = _as_matrix(text_vec).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"text vector has width {q.shape[0]}, index has {self.dim}")
        return _normalise_rows(q)

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
        return [
            SearchHit(
                self.repo_ids[r],
                self.tree_ids[r],
                float(s),
                None if self.documented is None else self.documented[r],
            )
            for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    def _scores(self, q: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
        """Calibrated scores of `rows` (a slice or positions) against the unit query q."""
        scale, offset = self._calib[0, rows], self._calib[1, rows]
        return scale * (self._emb[rows] @ q) - offset

    def _exact_rows(self, q: np.ndarray, rows: np.ndarray | None, k: int) -> list[SearchHit]:
        if rows is None:
            scores = self._scores(q, slice(None))
            top = _top_k(scores, k)
            return self._hits(top, scores[top])
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == rows.size:  # contiguous: slice, no copy
            scores = self._scores(q, slice(lo, hi))
            top = _top_k(scores, k)
            return self._hits(top + lo, scores[top])
        scores = self._scores(q, rows)
        top = _top_k(scores, k)
        return self._hits(rows[top], scores[top])

    def search(
        self, text_vec: np.ndarray | torch.Tensor, k: int = 10, tree: str | None = None
    ) -> list[SearchHit]:
        """The k models most similar to `text_vec`, best first; only `tree`'s if given."""
        q = self._query(text_vec)
        if tree is None:
            return self._exact_rows(q, None, k)
        rows = self._tree_rows.get(tree)
        return [] if rows is None else self._exact_rows(q, rows, k)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self._emb, "calibration": self._calib}

    def save(self, path: str | Path) -> None:
        """One safetensors file: vectors as tensors, ids and flags as JSON metadata."""
        meta = {
            "format": "np",
            "kind": self.kind,
            "repo_ids": json.dumps(self.repo_ids),
            "tree_ids": json.dumps(self.tree_ids),
            "documented": json.dumps(self.documented),
        }
        atomic_write_bytes(Path(path), save(self._arrays(), metadata=meta))


def _calibration(
    scales: Sequence[float] | np.ndarray | None,
    offsets: Sequence[float] | np.ndarray | None,
    n: int,
) -> np.ndarray:
    """(2, n) float32: per-row score scale (default 1) and offset (default 0)."""
    out = np.stack([np.ones(n, np.float32), np.zeros(n, np.float32)])
    for i, v in enumerate((scales, offsets)):
        if v is not None:
            v = np.asarray(v, dtype=np.float32).reshape(-1)
            if v.shape[0] != n:
                raise ValueError(f"{v.shape[0]} calibration values for {n} embeddings")
            out[i] = v
    return out


def load_index(path: str | Path) -> SearchIndex:
    """Load a `SearchIndex` written by `.save`, exactly as it was."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
    arrays = load_file(str(path))
    repo_ids = json.loads(meta["repo_ids"])
    tree_ids = json.loads(meta["tree_ids"])
    documented = json.loads(meta["documented"])
    kind = meta.get("kind")
    if kind == SearchIndex.kind:
        index = SearchIndex.__new__(SearchIndex)
        index._set(arrays["embeddings"], repo_ids, tree_ids, documented, arrays["calibration"])
        return index
    raise ValueError(f"{path}: unknown index kind {kind!r}")


def search_models_sql() -> str:
    """The DuckDB statement behind `probex search` (sql/search_models.sql)."""
    return SEARCH_MODELS_SQL


def search_models_duckdb(
    con: Any,
    text_vec: np.ndarray | torch.Tensor,
    encoder: str,
    k: int = 10,
    tree: str | None = None,
) -> list[SearchHit]:
    """Run `SEARCH_MODELS_SQL` on a DuckDB connection that has an `embeddings` view (its
    scores: log σ of `SearchIndex`'s where calibrated)."""
    q = _as_matrix(text_vec).reshape(-1).tolist()
    rows = con.execute(SEARCH_MODELS_SQL, [q, encoder, tree, tree, [], k]).fetchall()
    return [SearchHit(r, t, float(s), None if d is None else bool(d)) for r, t, s, _, d in rows]
