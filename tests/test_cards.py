"""Generated model cards: what they claim, that the Hub's own reader reads them, that they are
rewritten only when their tree's expert changes, and the upload as a pull request to a Hub the
test serves on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from huggingface_hub import ModelCard

from orchestration.cli import main
from probex_core.cards import MIN_CONFIDENCE, Listing, choose_threshold
from probex_core.cards.upload import upload_cards
from probex_core.catalog import read_table, write_table
from probex_core.pipeline.cards import build_cards
from tests.test_pipeline import copy_home


def _manifest(built) -> dict[str, dict]:
    from tests.test_pipeline import built_hub

    manifest = json.loads((built_hub(built[0]).parent / "manifest.json").read_text())
    return {m["repo_id"]: m for m in manifest["models"]}


# ---- the listing rule --------------------------------------------------------------------


def test_the_threshold_is_the_lowest_confidence_that_keeps_the_target_precision():
    P = np.array([[0.95, 0.9, 0.8, 0.7, 0.6, 0.55]])
    Y = np.array([[1, 1, 1, 0, 1, 0]])
    # listed at ≥0.6: 4 of 5 right (0.8); at ≥0.8: 3 of 3; at ≥0.55: 4 of 6
    assert choose_threshold(P, Y, False, target=0.8) == (0.6, 0.8, 1.0)
    assert choose_threshold(P, Y, False, target=0.9) == (0.8, 1.0, 0.75)
    t, best, recall = choose_threshold(P, 1 - Y, False, target=0.9)
    assert t is None and recall == 0.0 and best == pytest.approx(2 / 6)


def test_many_class_models_never_list_below_even_odds_and_one_class_models_list_one():
    P = np.array([[0.9, 0.4, 0.3], [0.45, 0.8, 0.2]])
    Y = np.array([[1, 1, 1], [1, 1, 1]])  # everything is right: precision never binds
    t, _, _ = choose_threshold(P, Y, False, target=0.9)
    assert t == 0.8 and t >= MIN_CONFIDENCE
    # the lowest cut at or above even odds must itself keep the target: at ≥0.8, 1 of 2 right
    assert choose_threshold(P, np.array([[1, 1, 1], [1, 0, 1]]), False, 0.9)[0] == 0.9
    single = np.array([[0.6, 0.3, 0.1], [0.2, 0.35, 0.45]])
    truth = np.array([[1, 0, 0], [0, 0, 1]])
    t, precision, _ = choose_threshold(single, truth, True, target=0.9)
    assert t == 0.45 and precision == 1.0  # below 0.5 is allowed for the one class
    rule = Listing(t, precision, 1.0, 2, single_label=True)
    assert rule.listed({"a": 0.46, "b": 0.45, "c": 0.09}) == [("a", 0.46)]
    assert rule.mask(single).tolist() == [[True, False, False], [False, False, True]]


# ---- cards on the built tiny home ---------------------------------------------------------


def test_every_undocumented_model_has_a_card_the_hub_reader_reads(built):
    """`probex run` wrote one card per undocumented model; `ModelCard.load` reads each, its
    base_model is the recovered parent, its tags name the tree, a listed class is above the
    tree's threshold, and it states the expert's accuracy and chance."""
    home, _ = built
    truth = _manifest(built)
    members = read_table(home, "tree_members").set_index("repo_id")
    summary = read_table(home, "tree_summary").set_index("tree_id")
    cards = read_table(home, "model_cards").set_index("repo_id")
    undocumented = {r for r, m in truth.items() if not m["documented"]}
    assert set(cards.index) == undocumented
    statuses = set()
    for repo_id in sorted(undocumented):
        card = ModelCard.load(home.cards / repo_id / "README.md")
        parent = members.at[repo_id, "parent"]
        assert card.data.base_model == parent
        tree = summary.at[members.at[repo_id, "tree_id"], "root_repo"]
        assert f"probex:tree={tree}" in card.data.tags and "probex-generated" in card.data.tags
        fields = card.data.probex
        statuses.add(fields["status"])
        assert fields["generated"] is True and fields["probex_version"]
        listed = fields["predicted_training_classes"]
        if fields["status"] == "predicted":
            assert fields["expert_version"] and fields["layer"]
            acc = fields["expert_accuracy"]
            assert acc["split"] == "test" and 0 <= acc["chance"] <= 1
            assert f"chance is {acc['chance']:.3f}" in card.text
            assert all(c["confidence"] >= round(fields["confidence_threshold"], 3) for c in listed)
            assert [c["name"] for c in listed] == list(cards.at[repo_id, "listed_classes"])
        else:  # the tiny zoo's mlp-base has too few documented models for an expert
            assert fields["status"] == "no-expert" and listed == []
            assert "has no expert" in card.text
    assert statuses == {"predicted", "no-expert"}


def test_card_precision_per_tree_is_in_evaluations_and_matches_the_cards(built):
    """The evaluations hold, per trained tree, the precision of the classes the cards list
    against the manifest; recomputed here from the cards themselves. On the multi-class tree
    it beats chance by a margin set from measurement (tiny zoo, FAST: 0.88 against 0.50)."""
    home, _ = built
    truth = _manifest(built)
    cards = read_table(home, "model_cards")
    rows = read_table(home, "evaluation_rows")
    rows = rows[(rows.method == "card") & (rows.metric == "listed_precision")]
    trained = read_table(home, "expert_status")
    trained = set(trained[trained.status == "trained"].tree_id)
    assert set(rows.tree_id) == trained and len(trained) == 2
    for tree_id in trained:
        test = cards[(cards.tree_id == tree_id)
                     & cards.repo_id.map(lambda r: truth[r]["split"] == "test")]  # fmt: skip
        listed = [
            (r, c) for r, cs in zip(test.repo_id, test.listed_classes, strict=True) for c in cs
        ]
        hits = sum(c in truth[r]["training_classes"] for r, c in listed)
        (row,) = rows[(rows.tree_id == tree_id) & (rows.split == "test")].itertuples()
        assert row.value == pytest.approx(hits / len(listed) if listed else 0.0)
        assert row.n == len(test)
    multi = rows[(rows.split == "test") & (rows.chance > 0.2)]
    assert len(multi) == 1
    assert multi.value.iloc[0] >= multi.chance.iloc[0] + 0.2, multi


def test_a_model_routed_to_no_tree_gets_a_card_that_predicts_nothing(built, tmp_path):
    home = copy_home(built[0], tmp_path / "home")
    routes = read_table(home, "routes")
    cards = read_table(home, "model_cards")
    orphan = cards[cards.status == "predicted"].repo_id.iloc[0]
    routes.loc[routes.repo_id == orphan, ["routed_tree", "reason"]] = (None, "far from every tree")
    write_table(home, "routes", routes)
    report = build_cards(home)
    assert report.summary["written"] == 1 and report.summary["removed"] == 0
    card = ModelCard.load(home.cards / orphan / "README.md")
    assert card.data.probex["status"] == "unknown-tree"
    assert card.data.probex["predicted_training_classes"] == []
    assert card.data.probex["tree"] is None
    for field in ("expert_version", "layer", "confidence_threshold", "expert_accuracy"):
        assert card.data.probex[field] is None, field  # no expert read it
    assert [t for t in card.data.tags if t.startswith("probex:tree=")] == []
    assert "match none of the 3 Model Trees" in card.text and "far from every tree" in card.text
    assert "| class |" not in card.text


def test_cards_of_models_that_left_are_removed_and_contradicted_ones_are_on_request(
    built, tmp_path
):
    home = copy_home(built[0], tmp_path / "home")
    disagree = read_table(home, "card_disagreements")
    assert len(disagree) > 0
    before = set(read_table(home, "model_cards").repo_id)
    report = build_cards(home, contradicted=True)
    assert report.summary["written"] == len(disagree) and report.summary["unchanged"] == len(before)
    repo = disagree.repo_id.iloc[0]
    card = ModelCard.load(home.cards / repo / "README.md")
    assert card.data.probex["declared_base_model"] == disagree.declared_base.iloc[0]
    assert card.data.base_model == disagree.recovered_parent.iloc[0]
    assert "**Contradiction.**" in card.text
    again = build_cards(home)  # not asked for any more: those cards go
    assert again.summary["removed"] == len(disagree) and again.summary["written"] == 0
    assert not (home.cards / repo / "README.md").exists()


# ---- upload ------------------------------------------------------------------------------


class _FakeHub:
    """What HfApi.upload_file calls: validate-yaml, preupload, commit. Records each commit."""

    def __init__(self) -> None:
        self.commits: list[dict] = []
        self.missing = {"gone/model"}
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, obj: object) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                u = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = u.path.strip("/").split("/")
                if u.path == "/api/validate-yaml":
                    return self._json(200, {})
                repo = "/".join(parts[2:4])
                if repo in hub.missing:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files]})  # fmt: skip
                if parts[4] == "commit":
                    lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                    files = {x["value"]["path"]: base64.b64decode(x["value"]["content"])
                             for x in lines if x["key"] == "file"}  # fmt: skip
                    hub.commits.append({"repo": repo, "query": parse_qs(u.query),
                                        "auth": self.headers.get("authorization"),
                                        "files": files})  # fmt: skip
                    n = len(hub.commits)
                    return self._json(200, {
                        "commitUrl": f"{hub.url}/{repo}/commit/{n:040x}",
                        "commitOid": f"{n:040x}",
                        "pullRequestUrl": f"{hub.url}/{repo}/discussions/{n}"})  # fmt: skip
                return self._json(404, {"error": "not found"})

        return Handler


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token stored by a login
    hub = _FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub.handler())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def test_upload_opens_pull_requests_and_without_a_token_only_says_so(built, fake_hub, capsys):
    home, _ = built
    cards = read_table(home, "model_cards").repo_id.head(2).tolist()
    said: list[str] = []
    assert upload_cards(home, cards, endpoint=fake_hub.url, say=said.append) == []
    assert fake_hub.commits == [] and "no token: set HF_TOKEN" in said[-1]
    assert f"would open 2 pull requests adding README.md ({cards[0]}, {cards[1]})" in said[-1]

    failures = upload_cards(home, [*cards], endpoint=fake_hub.url, token="hf_test", say=said.append)
    assert failures == []
    assert [c["repo"] for c in fake_hub.commits] == cards
    for commit in fake_hub.commits:
        assert commit["query"] == {"create_pr": ["1"]}, "a pull request, never a direct commit"
        assert commit["auth"] == "Bearer hf_test"
        local = (home.cards / commit["repo"] / "README.md").read_bytes()
        assert commit["files"] == {"README.md": local}
    assert f"{cards[0]}: pull request {fake_hub.url}/{cards[0]}/discussions/1" in said


def test_a_failed_upload_is_reported_and_the_others_go_on(built, fake_hub, monkeypatch):
    home, _ = built
    cards = read_table(home, "model_cards").repo_id.head(2).tolist()
    fake_hub.missing.add(cards[0])
    failures = upload_cards(home, cards, endpoint=fake_hub.url, token="hf_test", say=lambda _: None)
    assert len(failures) == 1 and failures[0].startswith(f"{cards[0]}: ")
    assert [c["repo"] for c in fake_hub.commits] == [cards[1]]


# ---- the command --------------------------------------------------------------------------


def test_probex_cards_writes_copies_and_says_so(built, tmp_path, monkeypatch, capsys):
    home = copy_home(built[0], tmp_path / "home")
    monkeypatch.setenv("PROBEX_HOME", str(home.root))
    n = len(read_table(home, "model_cards"))
    assert main(["cards", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"{n} model cards under {home.root / 'cards'}: 0 written, {n} unchanged" in out
    assert f"copied {n} cards to {tmp_path / 'out'}" in out
    copied = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.md"))
    assert copied == sorted(p.relative_to(home.cards) for p in home.cards.rglob("*.md"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cards"], "no predictions in"),
        (["cards", "--upload", "--repo", "nobody/none"], "no generated card for nobody/none"),
    ],
)
def test_probex_cards_user_errors_are_one_line(built, tmp_path, monkeypatch, capsys, argv, message):
    home = (
        Path(tmp_path / "empty") if argv == ["cards"] else copy_home(built[0], tmp_path / "h").root
    )
    monkeypatch.setenv("PROBEX_HOME", str(home))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probex: error: ") and message in err[0], err


@pytest.mark.parametrize("content", ["0203307707111430", "9f3a0c21b4d5e6f7"])
def test_a_cards_digest_reads_back_however_yaml_writes_it(tmp_path, content):
    """A digest of decimal digits only is written quoted in the card's YAML front matter; read back without its quotes, or that card is rewritten on every run
    (seen: one card of 36 whose digest was 0203307707111430)."""
    from huggingface_hub import ModelCardData

    from probex_core.pipeline.cards import _existing_digest

    card = tmp_path / "README.md"
    data = ModelCardData(tags=["probex-generated"], probex={"content_digest": content})
    card.write_text(f"---\n{data.to_yaml()}\n---\n\nbody\n")
    assert _existing_digest(card) == content
