"""The Hugging Face Hub API as a hub source: list by filters, headers by range requests.

Crawling one repo costs a model_info call (file list, sizes, commit), a ranged GET each for
the card and the config, and one or two range GETs for the safetensors header. Reading a
tensor is one ranged GET for exactly its bytes, pinned to the commit the header was read at,
so offsets cannot drift if the repo is updated between crawl and read.

Every request runs under one `RetryPolicy`: a timeout per try, and a few tries with capped
exponential backoff on what is likely transient (connection errors, timeouts, HTTP 429 and
5xx, a connection dropped mid-body, fewer bytes than asked). Other errors are not retried.
A repo whose request still fails becomes a `RepoError` naming the file and why, so the
crawl goes on; a listing that fails is a `UserError` (the hub as a whole is unreachable).
Cards and configs are fetched by the same ranged GETs rather than `hf_hub_download`, whose
own nested retries (fixed sleeps, a 60 s metadata retry timeout, a global download timeout)
this policy could not bound.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import torch
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

try:  # the HTTP client under huggingface_hub: httpx2 (as in 2.4), httpx in 1.x
    import httpx2
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    import httpx as httpx2  # type: ignore[no-redef]

from probex_core.digest import digest
from probex_core.errors import UserError
from probex_core.hub import parse
from probex_core.hub.records import RepoError, RepoRecord, check_file_size
from probex_core.hub.safetensors_io import ParsedHeader, decode_tensor, header_length, parse_header

FIRST_RANGE = 100_000  # one GET covers most headers (huggingface_hub uses the same guess)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request tries: `attempts` tries in all, each with `timeout` seconds to
    connect and between bytes read; between tries `backoff` seconds, doubling each time,
    at most `max_backoff` (a 429's Retry-After is honoured up to that cap too)."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0 or self.timeout <= 0:
            raise ValueError(f"invalid retry policy: {self}")

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after failed try number `attempt` (1-based)."""
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay


class _Transient(Exception):
    """A failure worth another try; `reason` ends up in the RepoError if none is left."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _retry_after(headers: Any) -> float | None:
    value = (headers.get("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None  # HTTP dates are not honoured


def _check_status(r: httpx2.Response) -> None:
    """429/5xx → _Transient (body unread); other 4xx/5xx → HfHubHTTPError."""
    if _retryable(r.status_code):
        raise _Transient(f"hub request failed: HTTP {r.status_code}", _retry_after(r.headers))
    if r.status_code >= 400:
        r.read()
        hf_raise_for_status(r)


class HubApiSource:
    """Repos on a Hub endpoint (huggingface.co or a mirror), selected by list_models filters.

    `base_model="org/name"` adds the hub's `base_model:org/name` tag filter: the way to crawl
    one declared Model Tree.
    """

    name = "hf_api"
    cheap_listing = False

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
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        filters = [filter] if isinstance(filter, str) else list(filter or [])
        if base_model:
            filters.append(f"base_model:{parse.validate_repo_id(base_model)}")
        self.filters = tuple(filters)
        self.author, self.search, self.limit = author, search, limit
        self.retry = retry or RetryPolicy()
        self._api = HfApi(endpoint=self.endpoint, token=token)

    def listing_fingerprint(self) -> str:
        return digest(sorted(self.list_repos()))

    def list_repos(self) -> Iterator[str]:
        """Model ids matching the filters, page by page (the hub's Link headers).

        A listing that fails after the retries raises UserError: the hub, not a repo, is at
        fault. Next-page links must stay on the endpoint's host.
        """
        params: list[tuple[str, str | int]] | None = [("filter", f) for f in self.filters]
        for key, value in (("author", self.author), ("search", self.search)):
            if value:
                params.append((key, value))
        if self.limit is not None:
            params.append(("limit", self.limit))
        url: str | None = f"{self.endpoint}/api/models"
        origin = urlsplit(self.endpoint)[:2]
        n = 0
        while url is not None and (self.limit is None or n < self.limit):
            try:
                page, next_url = self._retrying("", "", self._list_page, url, params)
            except RepoError as e:
                raise UserError(f"cannot list repos on {self.endpoint}: {e.reason}") from None
            for item in page[: None if self.limit is None else self.limit - n]:
                n += 1
                yield item
            if next_url is not None and urlsplit(next_url)[:2] != origin:
                raise UserError(f"hub {self.endpoint} paginates to another host: {next_url}")
            url, params = next_url, None  # the next link carries the query

    def _list_page(
        self, url: str, params: list[tuple[str, str | int]] | None
    ) -> tuple[list[str], str | None]:
        r = get_session().get(
            url, params=params, headers=self._headers(), timeout=self.retry.timeout
        )
        _check_status(r)
        page = r.json()
        if not isinstance(page, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in page
        ):
            raise UserError(f"hub {self.endpoint}: /api/models did not answer a list of models")
        return [m["id"] for m in page], r.links.get("next", {}).get("url")

    def _retrying(
        self, repo_id: str, file: str, call: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """`call(*args, **kwargs)` under the retry policy; RepoError(repo_id, file) at the end.

        Retried: _Transient (429, 5xx, short body), timeouts, connection errors and bodies
        cut short. An HfHubHTTPError with another status is final at once; so is a RepoError
        raised by `call` (a hub that answers wrongly is not asked again).
        """
        policy = self.retry
        where = f"{repo_id}/{file}" if file else repo_id or self.endpoint
        for attempt in range(1, policy.attempts + 1):
            retry_after = None
            try:
                result = call(*args, **kwargs)
            except _Transient as e:
                reason, retry_after = e.reason, e.retry_after
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if not _retryable(status):
                    raise RepoError(repo_id, file, f"hub request failed: {e}") from None
                reason = f"hub request failed: HTTP {status}"
                retry_after = _retry_after(e.response.headers)
            except httpx2.TimeoutException:
                reason = f"timed out ({policy.timeout:g} s)"
            except httpx2.RemoteProtocolError as e:
                reason = f"connection dropped: {e}"
            except httpx2.NetworkError as e:
                reason = f"connection failed: {e}"
            else:
                if attempt > 1:
                    log.info("%s: ok on attempt %d of %d", where, attempt, policy.attempts)
                return result
            if attempt == policy.attempts:
                break
            delay = policy.wait(attempt, retry_after)
            log.warning(
                "%s: %s; retry %d of %d in %.2g s",
                where,
                reason,
                attempt,
                policy.attempts - 1,
                delay,
            )
            time.sleep(delay)
        tries = f"{policy.attempts} attempt" + ("s" if policy.attempts > 1 else "")
        raise RepoError(repo_id, file, f"{reason} after {tries}")

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**build_hf_headers(token=self.token), **(extra or {})}

    def _url(self, repo_id: str, file: str, revision: str | None) -> str:
        return hf_hub_url(repo_id, file, revision=revision, endpoint=self.endpoint)

    def _range(
        self, repo_id: str, file: str, revision: str | None, start: int, end: int
    ) -> tuple[bytes, int | None]:
        """GET bytes [start, end), retried per the policy; returns (bytes, total size if known).

        Streams the response so that a server ignoring Range (200 + the whole file) is
        refused before the body is downloaded; never reads more than asked. Fewer bytes than
        asked (and than the file has, per Content-Range) is a short read, retried.
        """
        url = self._url(repo_id, file, revision)
        headers = self._headers(
            {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        )
        return self._retrying(
            repo_id, file, self._range_once, repo_id, file, url, headers, start, end
        )

    def _range_once(
        self, repo_id: str, file: str, url: str, headers: dict[str, str], start: int, end: int
    ) -> tuple[bytes, int | None]:
        with get_session().stream("GET", url, headers=headers, timeout=self.retry.timeout) as r:
            _check_status(r)
            if r.status_code != 206:
                raise RepoError(
                    repo_id, file, f"server ignored the Range request (HTTP {r.status_code})"
                )
            m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
            total = int(m.group(3)) if m else None
            if m and int(m.group(1)) != start:
                raise RepoError(
                    repo_id, file, f"server answered bytes from {m.group(1)}, asked from {start}"
                )
            want = (min(end, total) if total is not None else end) - start
            chunks: list[bytes] = []
            got = 0
            for chunk in r.iter_bytes():
                got += len(chunk)
                if got > want:
                    raise RepoError(repo_id, file, f"server sent more than the {want} bytes asked")
                chunks.append(chunk)
        if got < want:
            raise _Transient(f"short read: got {got} of {want} bytes")
        return b"".join(chunks), total

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
        """A card or config: one ranged GET, at most MAX_TEXT_BYTES + 1 bytes."""
        if size is not None:
            parse.check_text_size(repo_id, file, size)
        if size == 0:
            return ""
        n = size if size is not None else parse.MAX_TEXT_BYTES + 1
        data, _ = self._range(repo_id, file, revision, 0, n)
        return parse.decode_text(repo_id, file, data)

    def crawl(self, repo_id: str) -> RepoRecord:
        """model_info → weights choice → header by range → card and config by range."""
        parse.validate_repo_id(repo_id)
        info = self._retrying(
            repo_id,
            "",
            self._api.model_info,
            repo_id,
            files_metadata=True,
            timeout=self.retry.timeout,
        )
        revision = info.sha or "main"
        sizes, versions = _repo_files(repo_id, info)
        weights, kind = parse.choose_weights(repo_id, list(sizes))

        def known(file: str) -> int | None:
            return sizes[file] if sizes.get(file, -1) >= 0 else None

        if weights == parse.SHARD_INDEX:
            shards = parse.shard_files(
                repo_id, self._text(repo_id, weights, revision, known(weights))
            )
        else:
            shards = [weights]
        for s in shards:
            check_file_size(repo_id, s, known(s) or 0)
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


def _repo_files(repo_id: str, info: Any) -> tuple[dict[str, int], dict[str, str]]:
    """A model_info's files: size of each (-1 when unknown) and blob hash where given."""
    sizes: dict[str, int] = {}
    versions: dict[str, str] = {}
    for s in info.siblings or []:
        parse.validate_rel_path(repo_id, s.rfilename)
        sizes[s.rfilename] = s.size if s.size is not None else -1
        blob = s.lfs.sha256 if s.lfs else s.blob_id
        if blob:
            versions[s.rfilename] = blob
    return sizes, versions
