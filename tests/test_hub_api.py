"""HubApiSource against a tiny Hub the test serves itself on 127.0.0.1 (no other address).

The server implements what huggingface_hub calls: GET /api/models (with filter/author),
GET /api/models/{repo}[/revision/{rev}], and HEAD/GET /{repo}/resolve/{rev}/{file} with Range
support and the X-Repo-Commit / ETag / Content-Length headers hf_hub_download needs. Every
request is logged so the tests can count exactly what a crawl and a tensor read cost.

A hostile hub is the same server with faults injected: `FakeHub.faults` maps a glob over the
request path to an iterator of faults, one consumed per GET to a matching path (exhausted:
served normally). A fault is "429" / "500" / "429:N" (that status, with Retry-After: N),
"stall" (wait `stall_seconds` before answering), "drop" (full Content-Length, half the body,
then close) or "short" (half the body, with a Content-Length that matches it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch
from safetensors.torch import save_file

from probex_core.errors import UserError
from probex_core.hub import HubApiSource, LocalHubSource, RepoError, crawl_all, read_layer
from probex_core.hub.api import RetryPolicy
from tests.test_hub import make_full, make_lora

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class FakeHub:
    root: Path  # repos as directories ROOT/<org>/<name>
    tags: dict[str, list[str]] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    ignore_range: bool = False
    url: str = ""
    faults: dict[str, Iterator[str]] = field(default_factory=dict)
    stall_seconds: float = 3.0
    stop: threading.Event = field(default_factory=threading.Event)  # ends stalls at teardown
    page_size: int | None = None  # list models in pages linked by `Link: <…>; rel="next"`

    def fault(self, method: str, path: str) -> str | None:
        if method != "GET":
            return None
        for pattern, script in self.faults.items():
            if fnmatchcase(path, pattern):
                return next(script, None)
        return None

    def gets(self, pattern: str) -> int:
        return sum(1 for m, p, _ in self.log if m == "GET" and fnmatchcase(p, pattern))

    def repos(self) -> list[str]:
        return sorted(f"{o.name}/{r.name}" for o in self.root.iterdir() for r in o.iterdir())

    def sha(self, repo_id: str) -> str:
        h = hashlib.sha1(repo_id.encode())
        for f in sorted((self.root / repo_id).iterdir()):
            h.update(f.name.encode() + f.read_bytes())
        return h.hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def log_message(self, *args: object) -> None:
            pass

        cut: str | None = None  # "drop" | "short": the fault _send applies to the body

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

        def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            if self.cut == "short":
                body = body[: len(body) // 2]
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            if self.cut == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _inject(self, fault: str, head: bool) -> bool:
            """Apply a fault; True when it answered the request itself."""
            if fault in ("drop", "short"):
                self.cut = fault
                return False
            if fault == "stall":
                hub.stop.wait(hub.stall_seconds)
                return False
            status, _, retry_after = fault.partition(":")
            headers = {"Content-Type": "application/json"}
            if retry_after:
                headers["Retry-After"] = retry_after
            self._send(int(status), b'{"error": "injected"}', headers, head)
            return True

        def _json(self, obj: object, head: bool) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

        def _missing(self, code: str, head: bool) -> None:
            self._send(
                404,
                b'{"error": "not found"}',
                {"X-Error-Code": code, "Content-Type": "application/json"},
                head,
            )

        def _route(self, head: bool) -> None:
            u = urlsplit(self.path)
            path, q = unquote(u.path), parse_qs(u.query)
            hub.log.append((self.command, path, self.headers.get("Range")))
            self.cut = None
            fault = hub.fault(self.command, path)
            if fault is not None and self._inject(fault, head):
                return
            if path == "/api/models":
                ids = hub.repos()
                for f in q.get("filter", []):
                    ids = [i for i in ids if f in hub.tags.get(i, [])]
                if "author" in q:
                    ids = [i for i in ids if i.split("/")[0] == q["author"][0]]
                if "search" in q:
                    ids = [i for i in ids if q["search"][0] in i]
                headers = {"Content-Type": "application/json"}
                if hub.page_size:
                    start = int(q.get("cursor", ["0"])[0])
                    end = start + hub.page_size
                    if end < len(ids):
                        nxt = dict(q, cursor=[str(end)])
                        query = "&".join(f"{k}={v}" for k, vs in nxt.items() for v in vs)
                        headers["Link"] = f'<{hub.url}/api/models?{query}>; rel="next"'
                    ids = ids[start:end]
                body = [{"id": i, "modelId": i, "tags": hub.tags.get(i, [])} for i in ids]
                return self._send(200, json.dumps(body).encode(), headers, head)
            m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
            if m:
                repo_id = m.group(1)
                if repo_id not in hub.repos():
                    return self._missing("RepoNotFound", head)
                files = sorted((hub.root / repo_id).iterdir())
                siblings = []
                for f in files:
                    data = f.read_bytes()
                    s = {
                        "rfilename": f.name,
                        "size": len(data),
                        "blobId": hashlib.sha1(data).hexdigest(),
                    }
                    if f.suffix == ".safetensors":
                        s["lfs"] = {
                            "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "pointerSize": 130,
                        }
                    siblings.append(s)
                return self._json(
                    {
                        "id": repo_id,
                        "sha": hub.sha(repo_id),
                        "siblings": siblings,
                        "tags": hub.tags.get(repo_id, []),
                    },
                    head,
                )
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                repo_id, rev, file = m.groups()
                target = hub.root / repo_id / file
                if repo_id not in hub.repos() or rev not in ("main", hub.sha(repo_id)):
                    return self._missing(
                        "RepoNotFound" if repo_id not in hub.repos() else "RevisionNotFound", head
                    )
                if not target.is_file():
                    return self._missing("EntryNotFound", head)
                data = target.read_bytes()
                headers = {
                    "X-Repo-Commit": hub.sha(repo_id),
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                r = _RANGE.match(self.headers.get("Range") or "")
                if r and not hub.ignore_range:
                    start = int(r.group(1))
                    end = min(int(r.group(2)) if r.group(2) else len(data) - 1, len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    return self._send(206, data[start : end + 1], headers, head)
                return self._send(200, data, headers, head)
            return self._missing("NotFound", head)

    return Handler


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import close_session

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    close_session()  # a fresh HTTP client that sees this environment

    root = tmp_path / "served"
    make_full(root / "zoo" / "mlp-a", seed=0)
    make_full(root / "zoo" / "mlp-b", seed=2, documented=False)
    make_lora(root / "zoo" / "lora-a")
    trunc = root / "bad" / "truncated"
    trunc.mkdir(parents=True)
    trunc.joinpath("model.safetensors").write_bytes(
        (root / "zoo/mlp-a/model.safetensors").read_bytes()[:-10]
    )
    (root / "bad" / "pickle").mkdir()
    (root / "bad" / "pickle" / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    hub = FakeHub(
        root,
        tags={
            "zoo/mlp-a": ["base_model:zoo/root", "base_model:finetune:zoo/root"],
            "zoo/lora-a": ["base_model:zoo/root", "base_model:adapter:zoo/root"],
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.handle_error = lambda *_: None  # a client that timed out leaves a broken pipe
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.stop.set()
        server.shutdown()
        server.server_close()
        close_session()


def _source(hub: FakeHub, tmp_path: Path, **kw: object) -> HubApiSource:
    return HubApiSource(endpoint=hub.url, token=False, **kw)


def test_list_repos_by_filters(fake_hub: FakeHub, tmp_path: Path) -> None:
    assert list(_source(fake_hub, tmp_path).list_repos()) == fake_hub.repos()
    by_base = _source(fake_hub, tmp_path, base_model="zoo/root")
    assert list(by_base.list_repos()) == ["zoo/lora-a", "zoo/mlp-a"]
    adapters = _source(fake_hub, tmp_path, filter="base_model:adapter:zoo/root")
    assert list(adapters.list_repos()) == ["zoo/lora-a"]
    assert list(_source(fake_hub, tmp_path, author="bad").list_repos()) == [
        "bad/pickle",
        "bad/truncated",
    ]


def test_crawl_matches_the_local_reading_of_the_same_files(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    api, local = _source(fake_hub, tmp_path), LocalHubSource(fake_hub.root)
    for repo_id in ("zoo/mlp-a", "zoo/mlp-b", "zoo/lora-a"):
        fake_hub.log.clear()
        remote, disk = api.crawl(repo_id), local.crawl(repo_id)
        assert (remote.source, remote.revision, remote.location) == (
            "hf_api",
            fake_hub.sha(repo_id),
            repo_id,
        )
        for f in (
            "kind",
            "weights_file",
            "files",
            "card",
            "base_model",
            "base_model_relation",
            "config",
            "metadata",
            "training_classes",
            "documented",
            "tensors",
            "signature",
        ):
            assert getattr(remote, f) == getattr(disk, f), (repo_id, f)
        weights = [r for r in fake_hub.log if r[1].endswith(".safetensors")]
        # the weights file is touched only by ranged GETs (one suffices for a small header)
        assert len(weights) == 1 and weights[0][0] == "GET" and weights[0][2].startswith("bytes=0-")
    assert api.crawl("zoo/mlp-a").fingerprint == api.crawl("zoo/mlp-a").fingerprint


def test_read_tensor_is_one_ranged_get(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = _source(fake_hub, tmp_path)
    saved = make_full(fake_hub.root / "zoo" / "mlp-c", seed=4)
    record = api.crawl("zoo/mlp-c")
    fake_hub.log.clear()
    got = api.read_tensors(record, ["fc2.weight"])
    assert torch.equal(got["fc2.weight"], saved["fc2.weight"])
    info = record.tensors["fc2.weight"]
    assert fake_hub.log == [
        (
            "GET",
            f"/zoo/mlp-c/resolve/{record.revision}/model.safetensors",
            f"bytes={info.start}-{info.end - 1}",
        )
    ]


def test_read_layer_of_remote_lora(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = _source(fake_hub, tmp_path)
    t = make_lora(fake_hub.root / "zoo" / "lora-b", seed=3)
    record = api.crawl("zoo/lora-b")
    fake_hub.log.clear()
    x = read_layer(api, record, "fc1")
    a, b = t["base_model.model.fc1.lora_A.weight"], t["base_model.model.fc1.lora_B.weight"]
    assert torch.allclose(x, b @ a)
    assert len(fake_hub.log) == 2 and all(m == "GET" and r for m, _, r in fake_hub.log)


def test_large_header_takes_a_second_range(fake_hub: FakeHub, tmp_path: Path) -> None:
    repo = fake_hub.root / "zoo" / "big-header"
    repo.mkdir()
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    save_file({"w": w}, str(repo / "model.safetensors"), metadata={"notes": "x" * 150_000})
    api = _source(fake_hub, tmp_path)
    fake_hub.log.clear()
    record = api.crawl("zoo/big-header")
    ranges = [r for _, p, r in fake_hub.log if p.endswith("model.safetensors")]
    assert ranges[0] == "bytes=0-99999" and ranges[1].startswith("bytes=8-") and len(ranges) == 2
    assert record.metadata["notes"] == "x" * 150_000
    assert torch.equal(api.read_tensors(record, ["w"])["w"], w)


def test_bad_remote_repos_are_rejected(fake_hub: FakeHub, tmp_path: Path) -> None:
    records, rejected = crawl_all(_source(fake_hub, tmp_path))
    assert sorted(r.repo_id for r in records) == ["zoo/lora-a", "zoo/mlp-a", "zoo/mlp-b"]
    got = {r.repo_id: r for r in rejected}
    assert set(got) == {"bad/pickle", "bad/truncated"}
    assert (
        got["bad/truncated"].path == "model.safetensors"
        and "truncated" in got["bad/truncated"].reason
    )
    assert got["bad/pickle"].path == "pytorch_model.bin"
    assert not any(
        p.endswith(".bin") and m == "GET" for m, p, _ in fake_hub.log if "/resolve/" in p
    )
    with pytest.raises(RepoError, match="hub request failed"):
        _source(fake_hub, tmp_path).crawl("nobody/nothing")


def test_server_ignoring_range_is_refused(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = _source(fake_hub, tmp_path)
    record = api.crawl("zoo/mlp-a")
    fake_hub.ignore_range = True
    with pytest.raises(RepoError, match="ignored the Range"):
        api.read_tensors(record, ["fc1.weight"])


# -- a hostile hub: bounded retries, then a reject with the reason; the crawl goes on ----------

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, timeout=5.0)
WEIGHTS_B = "/zoo/mlp-b/resolve/*/model.safetensors"


def test_retry_policy_backs_off_exponentially_within_its_cap() -> None:
    p = RetryPolicy(backoff=0.5, max_backoff=3.0)
    assert [p.wait(a) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert p.wait(1, retry_after=2) == 2.0 and p.wait(1, retry_after=60) == 3.0
    assert p.wait(3, retry_after=0) == 2.0
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    ("pattern", "faults"),
    [
        ("/api/models/zoo/mlp-a", ["429:1"]),  # Retry-After 1 s, capped by max_backoff
        ("/zoo/mlp-a/resolve/*/model.safetensors", ["500", "503"]),
        ("/zoo/mlp-a/resolve/*/README.md", ["drop"]),
        ("/zoo/mlp-a/resolve/*/config.json", ["short"]),
    ],
    ids=["429-model-info", "5xx-weights", "drop-card", "short-config"],
)
def test_transient_faults_are_retried(
    fake_hub: FakeHub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    pattern: str,
    faults: list[str],
) -> None:
    api = _source(fake_hub, tmp_path, retry=FAST)
    clean = api.crawl("zoo/mlp-a")
    fake_hub.log.clear()
    fake_hub.faults[pattern] = iter(faults)
    with caplog.at_level(logging.WARNING, logger="probex_core.hub.api"):
        record = api.crawl("zoo/mlp-a")
    assert record == clean
    assert fake_hub.gets(pattern) == len(faults) + 1
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == len(faults) and f"retry {len(faults)} of 3" in retries[-1]
    # the waits the policy chose: backoff doubling from 0.01 s, a 429's Retry-After of 1 s
    # capped at max_backoff (0.05 s)
    waits = [float(re.search(r"in ([0-9.e-]+) s$", m).group(1)) for m in retries]
    expect = [FAST.wait(i + 1, 1 if f.startswith("429") else None) for i, f in enumerate(faults)]
    assert waits == pytest.approx(expect, rel=0.05) and max(waits) <= FAST.max_backoff


@pytest.mark.parametrize(
    ("pattern", "fault", "path", "reason", "tries"),
    [
        ("/api/models/zoo/mlp-b", "500", "", "HTTP 500 after 3 attempts", 3),
        (WEIGHTS_B, "stall", "model.safetensors", r"timed out \(0.5 s\) after 3 attempts", 3),
        (WEIGHTS_B, "short", "model.safetensors", r"short read: got \d+ of \d+ bytes after 3", 3),
        (WEIGHTS_B, "drop", "model.safetensors", "connection dropped: .* after 3 attempts", 3),
        (WEIGHTS_B, "403", "model.safetensors", "hub request failed: .*403", 1),  # not retried
    ],
    ids=["500", "stall", "short", "drop", "403"],
)
def test_persistent_fault_rejects_that_repo_and_the_crawl_goes_on(
    fake_hub: FakeHub, tmp_path: Path, pattern: str, fault: str, path: str, reason: str, tries: int
) -> None:
    fake_hub.faults[pattern] = itertools.repeat(fault)
    policy = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, timeout=0.5)
    records, rejected = crawl_all(_source(fake_hub, tmp_path, author="zoo", retry=policy))
    assert sorted(r.repo_id for r in records) == ["zoo/lora-a", "zoo/mlp-a"]
    assert [(r.repo_id, r.path) for r in rejected] == [("zoo/mlp-b", path)]
    assert re.search(reason, rejected[0].reason), rejected[0].reason
    assert fake_hub.gets(pattern) == tries


def test_read_tensors_survives_transient_faults(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = _source(fake_hub, tmp_path, retry=FAST)
    saved = make_full(fake_hub.root / "zoo" / "mlp-c", seed=4)
    record = api.crawl("zoo/mlp-c")
    fake_hub.log.clear()
    fake_hub.faults["/zoo/mlp-c/resolve/*"] = iter(["drop", "short", "502"])
    got = api.read_tensors(record, ["fc2.weight"])
    assert torch.equal(got["fc2.weight"], saved["fc2.weight"])
    info = record.tensors["fc2.weight"]
    assert {r for _, _, r in fake_hub.log} == {f"bytes={info.start}-{info.end - 1}"}
    assert len(fake_hub.log) == 4


def test_listing_retries_then_fails_as_one_user_error(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.faults["/api/models"] = iter(["429", "drop"])
    api = _source(fake_hub, tmp_path, retry=FAST)
    assert list(api.list_repos()) == fake_hub.repos()
    fake_hub.faults["/api/models"] = itertools.repeat("503")
    with pytest.raises(UserError, match=r"cannot list repos on .*HTTP 503 after 4 attempts"):
        list(api.list_repos())


def test_the_pipeline_reads_a_hub_api_as_it_reads_the_same_files_on_disk(
    fake_hub: FakeHub, tiny_zoo: Path, tmp_path: Path
) -> None:
    """crawl → tree recovery → layer extraction through `hf:<endpoint>`, against the same
    repos read as a local directory: the same repos, rejections, trees, parents and layers."""
    import shutil

    from probex_core import pipeline
    from probex_core.catalog import Home, read_table
    from probex_core.hub import make_source
    from probex_core.store import TreeLayers

    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    for m in manifest["models"]:
        if m["tree_id"] == "mlp-b":  # one whole tree, served beside the fixture's repos
            shutil.copytree(tiny_zoo / "hub" / m["repo_id"], fake_hub.root / m["repo_id"])
    homes = {}
    for name, spec in (("api", f"hf:{fake_hub.url}"), ("local", str(fake_hub.root))):
        home, source = Home(tmp_path / name), make_source(spec)
        pipeline.crawl(home, source)
        pipeline.recover(home, source)
        members = read_table(home, "tree_members")
        tree = members.loc[members.repo_id == "openvision/mlp-base", "tree_id"].iloc[0]
        pipeline.extract_layers(home, source, tree)
        homes[name] = (home, tree)

    def view(name: str) -> tuple:
        home, tree = homes[name]
        members = read_table(home, "tree_members").sort_values("repo_id")
        rejected = read_table(home, "rejected").sort_values("repo_id")
        layers = TreeLayers(home, tree)
        index = layers.index()
        X = layers.read(next(iter(index["layers"])))
        return (
            members[["repo_id", "tree_id", "parent"]].values.tolist(),
            rejected[["repo_id", "path"]].values.tolist(),
            index["repo_ids"],
            X,
        )

    api, local = view("api"), view("local")
    assert api[:3] == local[:3] and len(api[2]) == 28
    assert torch.equal(api[3], local[3])


def test_listing_follows_pages_and_passes_search_and_limit(fake_hub: FakeHub, tmp_path: Path):
    """The Hub pages /api/models with Link headers: every page is read, in order; `search=`
    and `limit=` reach the server and bound what is listed."""
    fake_hub.page_size = 2
    everything = fake_hub.repos()
    assert list(_source(fake_hub, tmp_path).list_repos()) == everything
    pages = [p for m, p, _ in fake_hub.log if m == "GET" and p == "/api/models"]
    assert len(pages) == -(-len(everything) // 2)  # ceil: one request per page
    assert list(_source(fake_hub, tmp_path, search="mlp").list_repos()) == [
        i for i in everything if "mlp" in i
    ]
    fake_hub.log.clear()
    assert list(_source(fake_hub, tmp_path, limit=3).list_repos()) == everything[:3]
    assert len([p for m, p, _ in fake_hub.log if p == "/api/models"]) == 2  # stops after 3
