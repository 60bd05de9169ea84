"""The Hugging Face Hub API as a hub source: list by filters, headers by range requests.

Crawling one repo costs a model_info call (file list, sizes, commit), a card and config
download, and one or two range GETs for the safetensors header. Reading a tensor is one
ranged GET for exactly its bytes, pinned to the commit the header was read at, so offsets
cannot drift if the repo is updated between crawl and read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from probex_core.hub import parse
from probex_core.hub.records import RepoError, RepoRecord
from probex_core.hub.safetensors_io import ParsedHeader, decode_tensor, header_length, parse_header

FIRST_RANGE = 100_000  # one GET covers most headers (huggingface_hub uses the same guess)
_CONTENT_RANGE = re.compile(r"^bytes \d+-\d+/(\d+)$")


class HubApiSource:
    """Repos on a Hub endpoint (huggingface.co or a mirror), selected by list_models filters.

    `base_model="org/name"` adds the hub's `base_model:org/name` tag filter: the way to crawl
    one declared Model Tree.
    """

    name = "hf_api"

    def __init__(
        self,
        endpoint: str = "https://huggingface.co",
        token: str | bool | None = None,
        *,
        filter: str | Sequence[str] | None = None,
        author: str | None = None,
        search: str | None = None,
        base_model: str | None = None,
        limit: int | None = None,
        cache_dir: Path | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        filters = [filter] if isinstance(filter, str) else list(filter or [])
        if base_model:
            filters.append(f"base_model:{parse.validate_repo_id(base_model)}")
        self.filters = tuple(filters)
        self.author, self.search, self.limit = author, search, limit
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout = timeout
        self._api = HfApi(endpoint=self.endpoint, token=token)

    def list_repos(self) -> Iterator[str]:
        """Model ids matching the filters (paginated by huggingface_hub)."""
        for model in self._api.list_models(
            filter=list(self.filters) or None,
            author=self.author,
            search=self.search,
            limit=self.limit,
        ):
            yield model.id

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**build_hf_headers(token=self.token), **(extra or {})}

    def _url(self, repo_id: str, file: str, revision: str | None) -> str:
        return hf_hub_url(repo_id, file, revision=revision, endpoint=self.endpoint)

    def _range(
        self, repo_id: str, file: str, revision: str | None, start: int, end: int
    ) -> tuple[bytes, int | None]:
        """GET bytes [start, end) with one request; returns (bytes, total size if known).

        Streams the response so that a server ignoring Range (200 + the whole file) is
        refused before the body is downloaded.
        """
        url = self._url(repo_id, file, revision)
        headers = self._headers(
            {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        )
        try:
            with get_session().stream("GET", url, headers=headers, timeout=self.timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    hf_raise_for_status(r)
                if r.status_code != 206:
                    raise RepoError(
                        repo_id, file, f"server ignored the Range request (HTTP {r.status_code})"
                    )
                data = r.read()
                m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
        except HfHubHTTPError as e:
            raise RepoError(repo_id, file, f"hub request failed: {e}") from None
        return data, int(m.group(1)) if m else None

    def _header(self, repo_id: str, file: str, revision: str, size: int | None) -> ParsedHeader:
        first = min(FIRST_RANGE, size) if size else FIRST_RANGE
        if first < 8:
            raise RepoError(repo_id, file, f"truncated: {size} bytes, no safetensors header")
        data, total = self._range(repo_id, file, revision, 0, first)
        size = size if size is not None else total
        if size is None:
            raise RepoError(
                repo_id, file, "file size unknown (no size in listing or Content-Range)"
            )
        n = header_length(data[:8], repo_id, file, size)
        if 8 + n <= len(data):
            header_json = data[8 : 8 + n]
        else:
            header_json, _ = self._range(repo_id, file, revision, 8, 8 + n)
        if len(header_json) != n:
            raise RepoError(repo_id, file, "truncated: header shorter than declared")
        return parse_header(header_json, size, repo_id, file)

    def _text(self, repo_id: str, file: str, revision: str, size: int | None) -> str:
        if size is not None:
            parse.check_text_size(repo_id, file, size)
        try:
            path = hf_hub_download(
                repo_id,
                file,
                revision=revision,
                endpoint=self.endpoint,
                token=self.token,
                cache_dir=self.cache_dir,
            )
        except HfHubHTTPError as e:
            raise RepoError(repo_id, file, f"hub request failed: {e}") from None
        with open(path, "rb") as f:
            return parse.decode_text(repo_id, file, f.read(parse.MAX_TEXT_BYTES + 1))

    def crawl(self, repo_id: str) -> RepoRecord:
        """model_info → weights choice → header by range → card and config downloads."""
        parse.validate_repo_id(repo_id)
        try:
            info = self._api.model_info(repo_id, files_metadata=True, timeout=self.timeout)
        except HfHubHTTPError as e:
            raise RepoError(repo_id, "", f"hub request failed: {e}") from None
        revision = info.sha or "main"
        sizes: dict[str, int] = {}
        versions: dict[str, str] = {}
        for s in info.siblings or []:
            parse.validate_rel_path(repo_id, s.rfilename)
            sizes[s.rfilename] = s.size if s.size is not None else -1
            blob = s.lfs.sha256 if s.lfs else s.blob_id
            if blob:
                versions[s.rfilename] = blob
        weights, kind = parse.choose_weights(repo_id, list(sizes))

        def known(file: str) -> int | None:
            return sizes[file] if sizes.get(file, -1) >= 0 else None

        if weights == parse.SHARD_INDEX:
            shards = parse.shard_files(
                repo_id, self._text(repo_id, weights, revision, known(weights))
            )
        else:
            shards = [weights]
        headers = {s: self._header(repo_id, s, revision, known(s)) for s in shards}
        card_text = (
            self._text(repo_id, parse.CARD_FILE, revision, known(parse.CARD_FILE))
            if parse.CARD_FILE in sizes
            else None
        )
        config_files = [c for c in parse.CONFIG_FILES if c in sizes]
        if kind == "full":
            config_files = [c for c in config_files if c == "config.json"] or config_files
        config_file = config_files[0] if config_files else None
        config_text = (
            self._text(repo_id, config_file, revision, known(config_file)) if config_file else None
        )
        return parse.build_record(
            repo_id=repo_id,
            source=self.name,
            kind=kind,
            weights_file=weights,
            files=list(sizes),
            headers=headers,
            sizes=sizes,
            card_text=card_text,
            config_file=config_file,
            config_text=config_text,
            revision=revision,
            location=repo_id,
            versions={s: versions[s] for s in shards if s in versions},
        )

    def read_tensors(self, record: RepoRecord, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """One ranged GET per tensor, for exactly its bytes, at the crawled commit."""
        if record.source != self.name:
            raise ValueError(f"record from source {record.source!r}, not {self.name!r}")
        repo_id = parse.validate_repo_id(record.location or record.repo_id)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            info = record.tensors.get(name)
            if info is None:
                raise RepoError(record.repo_id, record.weights_file, f"no tensor named {name!r}")
            parse.validate_rel_path(repo_id, info.file)
            if info.end == info.start:
                data = b""
            else:
                data, _ = self._range(repo_id, info.file, record.revision, info.start, info.end)
            if len(data) != info.end - info.start:
                raise RepoError(
                    record.repo_id, info.file, "short read: the file changed or is truncated"
                )
            out[name] = decode_tensor(info, data)
        return out
