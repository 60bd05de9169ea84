"""Hostile hubs: fuzzing the safetensors header reader, the card parser and metadata decoding.

Every reader of untrusted text must either return plain, JSON-serialisable data (a header
whose tensors lie inside the file) or raise RepoError — never another exception, never run
anything. Explicit cases cover the card attacks: alias bombs, cycles, self-named bases.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import struct
import tracemalloc
from pathlib import Path

import duckdb
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from probex_core.hub import LocalHubSource, RepoError, crawl_all
from probex_core.hub.cards import MAX_CARD_NODES, MAX_FRONT_MATTER_CHARS, MAX_INT_BITS, parse_card
from probex_core.hub.parse import base_models, build_record, decode_metadata_value
from probex_core.hub.safetensors_io import (
    DTYPES,
    ParsedHeader,
    decode_tensor,
    header_length,
    parse_header,
)
from probex_core.trees import trees_from_declared_edges_networkx, trees_from_declared_edges_sql

REPO, FILE = "fuzz/repo", "model.safetensors"


def fuzz(n: int):
    """Few examples, no deadline (machines are shared), no example database on disk.

    PROBEX_FUZZ_SCALE=50 runs fifty times as many examples, for a deliberate fuzzing session.
    """
    return settings(
        max_examples=n * int(os.environ.get("PROBEX_FUZZ_SCALE", "1")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---- safetensors headers ------------------------------------------------------------------------


def read_header(data: bytes) -> ParsedHeader:
    """What a source does with a weights file: length prefix, then the JSON header."""
    n = header_length(data[:8], REPO, FILE, len(data))
    return parse_header(data[8 : 8 + n], len(data), REPO, FILE)


def check_header(parsed: ParsedHeader, data: bytes) -> None:
    """A header that parses describes tensors inside the file, sized by dtype × shape."""
    assert parsed.data_start == len(parsed.header_bytes) <= len(data)
    assert data[: parsed.data_start] == parsed.header_bytes
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.metadata.items())
    spans = []
    for name, t in parsed.tensors.items():
        assert name == t.name and name and t.file == FILE and t.dtype in DTYPES
        assert all(type(s) is int and s >= 0 for s in t.shape)
        assert parsed.data_start <= t.start <= t.end <= len(data)
        assert t.end - t.start == math.prod(t.shape) * DTYPES[t.dtype][1]
        if t.end > t.start:
            spans.append((t.start, t.end))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def header_or_error(data: bytes) -> None:
    try:
        parsed = read_header(data)
    except RepoError as e:
        assert e.repo_id == REPO and e.path == FILE and e.reason
        assert len(e.reason) < 5000  # reasons quote untrusted values briefly
        return
    check_header(parsed, data)


@fuzz(300)
@given(st.binary(max_size=512))
def test_header_arbitrary_bytes(data: bytes) -> None:
    header_or_error(data)


@fuzz(300)
@given(st.binary(max_size=300), st.integers(-3, 3), st.integers(0, 64))
def test_header_arbitrary_json_bytes(body: bytes, slack: int, tail: int) -> None:
    """Random bytes behind a length prefix that (nearly) fits: the JSON parser sees them."""
    data = struct.pack("<Q", max(0, len(body) + slack)) + body + b"\0" * tail
    header_or_error(data)


HUGE = [2**31, 2**32 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 8, 10**300, int("9" * 4300)]
numbers = st.one_of(
    st.integers(0, 16),
    st.integers(-(2**70), 2**70),
    st.sampled_from(HUGE + [-n for n in HUGE]),
    st.floats(allow_nan=False),  # json.dumps writes inf as Infinity, which json.loads reads
    st.just(True),
)
json_leaf = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_any = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
)
dtypes = st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(["f32", "F128", ""]), json_any)
shapes = st.one_of(
    st.lists(numbers, max_size=5), st.lists(st.integers(0, 3), max_size=70), json_any
)
offsets = st.one_of(st.lists(numbers, min_size=0, max_size=3), json_any)


def _dumps_pairs(pairs: list[tuple[str, object]]) -> str:
    """A JSON object written by hand, so that keys may repeat."""
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"


@st.composite
def laid_out_tensors(draw: st.DrawFn) -> tuple[list[tuple[str, object]], int]:
    """Well-formed entries one after another; some files get gaps, overlaps, bad fields."""
    sloppy = draw(st.sampled_from(range(3))) == 2  # (integers() would favour 0)

    def off(choices: list) -> object:
        return draw(st.sampled_from(choices)) if sloppy else choices[0]

    pairs: list[tuple[str, object]] = []
    cursor = 0
    for i in range(draw(st.integers(0, 6))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        start = max(0, cursor + off([0, 0, 0, 1, -1, -4]))
        end = start + nbytes + off([0, 0, 0, 0, 1, -1])
        cursor = max(cursor, end)
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
        if off([False] * 9 + [True]):  # one field replaced by anything
            entry[draw(st.sampled_from(sorted(entry)))] = draw(json_any)
        name = off([f"t{i}"] * 9 + ["t0", "", "x" * 1025, "__metadata__"])
        pairs.append((name, entry))
    return pairs, cursor


@st.composite
def header_files(draw: st.DrawFn) -> bytes:
    if draw(st.sampled_from(range(3))) > 0:
        pairs, needed = draw(laid_out_tensors())
    else:
        entry = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets})
        names = st.sampled_from(["a", "b", "a.weight", ""]) | st.text(max_size=6)
        pairs = draw(st.lists(st.tuples(names, entry | json_any), max_size=4))
        if (
            draw(st.sampled_from(range(4))) > 0
        ):  # mostly distinct names, so that the entries get checked
            pairs = list(dict(pairs).items())
        needed = draw(st.integers(0, 256))
    text_map = st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3)
    metadata = draw(st.one_of(st.none(), st.none(), text_map, text_map, text_map, json_any))
    if metadata is not None or draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), ("__metadata__", metadata))
    text = _dumps_pairs(pairs)
    if draw(st.sampled_from(range(10))) == 9:  # a repeated key inside a tensor entry
        text = text.replace('"dtype":', '"dtype": "F32", "dtype":', 1)
    header = text.encode() + b" " * draw(st.integers(0, 7))  # writers pad to 8 bytes
    slack = draw(st.sampled_from([0, 0, 0, 0, 1, -1, 2**40]))
    data_len = max(0, needed + draw(st.sampled_from([0, 0, 0, 3, -1, -8])))
    return struct.pack("<Q", max(0, len(header) + slack)) + header + b"\0" * data_len


@fuzz(400)
@given(header_files())
def test_header_structured_fuzz(data: bytes) -> None:
    header_or_error(data)


def test_header_absurd_sizes_refused_cheaply() -> None:
    """Declared sizes are checked against limits and the real file before anything is read."""
    for n in (2**64 - 1, 2**40, 100 * 1024 * 1024 + 1):
        with pytest.raises(RepoError, match="exceeds|truncated"):
            header_length(struct.pack("<Q", n), REPO, FILE, 1024)
    bomb = {"t": {"dtype": "F32", "shape": [2**62] * 64, "data_offsets": [0, 4]}}
    tracemalloc.start()
    with pytest.raises(RepoError, match=r"needs more than 2\*\*64"):
        parse_header(json.dumps(bomb).encode(), 10_000, REPO, FILE)
    far = {"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, int("9" * 4300)]}}
    with pytest.raises(RepoError, match="truncated.*bit number"):
        parse_header(json.dumps(far).encode(), 10_000, REPO, FILE)
    with pytest.raises(RepoError, match="unsupported dtype"):  # unhashable: once a TypeError
        parse_header(b'{"t": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}', 99, REPO, FILE)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000  # no giant product or number was ever built (bytes)


tensor_dtypes = st.sampled_from(sorted(DTYPES))
tensor_specs = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
    st.tuples(tensor_dtypes, st.lists(st.integers(0, 4), max_size=3)),
    min_size=1,
    max_size=5,
)


def _random_tensor(dtype: str, shape: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch_dtype = DTYPES[dtype][0]
    if dtype == "BOOL":
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.startswith(("I", "U")):
        return torch.randint(0, 100, shape, generator=g).to(torch_dtype)
    return torch.randn(shape, generator=g).to(torch_dtype)


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@fuzz(40)
@given(
    tensor_specs,
    st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3),
    st.integers(0, 2**31),
)
def test_header_round_trip_with_safetensors(
    tmp_path_factory: pytest.TempPathFactory, specs: dict, metadata: dict, seed: int
) -> None:
    """Files written by safetensors parse to what safe_open reports, byte for byte."""
    tensors = {n: _random_tensor(d, s, seed + i) for i, (n, (d, s)) in enumerate(specs.items())}
    path = tmp_path_factory.mktemp("rt") / FILE
    save_file(tensors, str(path), metadata=metadata or None)
    data = path.read_bytes()
    parsed = read_header(data)
    check_header(parsed, data)
    assert parsed.metadata == metadata
    with safe_open(str(path), "pt") as f:
        assert sorted(parsed.tensors) == sorted(f.keys())
        for name, info in parsed.tensors.items():
            sl = f.get_slice(name)
            assert (info.dtype, list(info.shape)) == (sl.get_dtype(), list(sl.get_shape()))
            stored = decode_tensor(info, data[info.start : info.end])
            assert torch.equal(_raw(stored), _raw(f.get_tensor(name)))
            assert torch.equal(_raw(stored), _raw(tensors[name]))


# ---- model cards --------------------------------------------------------------------------------


def card_or_error(text: str) -> dict | None:
    try:
        card = parse_card(REPO, text)
    except RepoError as e:
        assert e.repo_id == REPO and e.path == "README.md" and e.reason
        return None
    assert isinstance(card, dict)
    json.dumps(card)  # what the crawl writes to records.json
    return card


@fuzz(200)
@given(st.text(max_size=300))
def test_card_arbitrary_text(text: str) -> None:
    card_or_error(text)
    card_or_error("---\n" + text + "\n---\n# body\n")


# fmt: off
YAML_TOKENS = [
    "&a ", "*a", "&b ", "*b", "<<: ", ": ", "- ", "[", "]", "{", "}", ", ", "? ", "|", ">",
    "'", '"', "\n", "\n  ", "\n- ", "#", "~", "null", "yes", "no", ".nan", ".inf", "-.inf",
    "1e999", "0x" + "f" * 40, "0x" + "f" * 3000, "9" * 4400, "0o17", "1_000", "190:20:30",
    "2020-01-01", "2020-13-45", "2001-12-14t21:59:43.10-05:00", "2020-02-30 25:61:61",
    "!!set ", "!!binary ", "!!timestamp ", "!!int ", "!!float ", "!!str ", "!!omap ",
    "!!pairs ", "!!map ", "!!seq ", "!!null ", "!!bool ", "!!merge ", "!!value ",
    "!!python/object/apply:os.system ", "!!python/name:os.system ", "!custom ",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "...\n", "base_model", "base_model_relation",
    "training_classes", "\t", "\\", "\x00", "\x85", "\ufeff", "é", "🙂",
]
# fmt: on
printable = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=4)
fragment = st.lists(st.sampled_from(YAML_TOKENS) | printable, max_size=12).map("".join)
yamlish = st.one_of(
    st.lists(st.sampled_from(YAML_TOKENS) | printable, max_size=40).map("".join),
    st.lists(st.tuples(fragment, fragment), max_size=6).map(
        lambda kv: "\n".join(f"k{i}{k}: {v}" for i, (k, v) in enumerate(kv))
    ),
    st.lists(fragment, max_size=6).map(
        lambda vs: "\n".join(f"key{i}: {v}" for i, v in enumerate(vs))
    ),
)


@fuzz(400)
@given(yamlish)
def test_card_yamlish_front_matter(body: str) -> None:
    card_or_error("---\n" + body + "\n---\n")
    card_or_error("---\nbase_model: x/y\n" + body + "\n---\n")


yaml_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**60, max_value=2**14000),  # safe_dump: < 4300 digits
    st.floats(),
    st.text(max_size=12),
    st.dates(),
    st.datetimes(),
)
yaml_data = st.recursive(
    yaml_leaf,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers() | st.booleans(), kids, max_size=4)
    ),
    max_leaves=20,
)


def _widest_int(value: object) -> int:
    if isinstance(value, dict):
        return max([0, *map(_widest_int, value), *map(_widest_int, value.values())])
    if isinstance(value, list):
        return max([0, *map(_widest_int, value)])
    return value.bit_length() if isinstance(value, int) else 0


def _expected(value: object) -> object:
    """What parse_card should return for data yaml.safe_dump wrote."""
    if isinstance(value, dict):
        return {str(k): _expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expected(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


@fuzz(150)
@given(st.dictionaries(st.text(max_size=8), yaml_data, max_size=5), st.integers(0, 3))
def test_card_dumped_data(data: dict, shared: int) -> None:
    """Cards yaml.safe_dump writes read back as the same data (dates as ISO strings)."""
    if shared and data:  # a shared object: safe_dump writes an anchor and aliases
        first = next(iter(data.values()))
        data = {**data, **{f"alias{i}": first for i in range(shared)}}
    text = "---\n" + yaml.safe_dump(data) + "---\n"
    card = card_or_error(text)
    if _widest_int(data) > MAX_INT_BITS:  # refused: it could not be written back as JSON
        assert card is None
        with pytest.raises(RepoError, match=f"integer of more than {MAX_INT_BITS} bits"):
            parse_card(REPO, text)
        return
    assert card is not None
    want = _expected(data)
    assert json.dumps(card, sort_keys=True) == json.dumps(want, sort_keys=True)


def _bomb(levels: int, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "---\n" + "\n".join(lines) + "\n---\n# a card\n"


def test_alias_bomb_rejected_before_it_is_built(monkeypatch) -> None:
    built = []  # documents PyYAML was asked to build: the bomb is refused before that
    construct = yaml.SafeLoader.construct_document
    monkeypatch.setattr(
        yaml.SafeLoader,
        "construct_document",
        lambda self, node: built.append(node) or construct(self, node),
    )
    with pytest.raises(RepoError) as e:
        parse_card(REPO, _bomb(9))  # 10**9 nodes once expanded, 300 bytes of text
    assert built == []
    assert e.value.path == "README.md" and e.value.repo_id == REPO
    assert f"more than {MAX_CARD_NODES} nodes once aliases are expanded" in e.value.reason
    merge = ["m0: &m0 {k: v}"] + [
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 9)
    ]
    with pytest.raises(RepoError, match="aliases are expanded"):  # the same through merge keys
        parse_card(REPO, "---\n" + "\n".join(merge) + "\n---\n")
    # small anchors are ordinary YAML and still read
    ok = parse_card(REPO, "---\ndefaults: &d {lr: 0.1, tags: [a]}\ntrain: *d\n---\n")
    assert ok == {"defaults": {"lr": 0.1, "tags": ["a"]}, "train": {"lr": 0.1, "tags": ["a"]}}
    assert parse_card(REPO, _bomb(3)) is not None


@pytest.mark.parametrize("body", ["a: &a [*a]", "a: &a {b: *a}", "a: &a [1, {b: [*a]}]"])
def test_recursive_alias_rejected(body: str) -> None:
    """safe_load builds a list that contains itself; once _plain recursed until it crashed."""
    with pytest.raises(RepoError, match="alias refers to the node that contains it"):
        parse_card(REPO, f"---\n{body}\n---\n")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("base_model: [unclosed", "bad YAML front matter"),
        ("date: 2020-13-45", "month must be in 1..12"),  # once a ValueError escaped
        ("n: " + "9" * 5000, "digits"),  # once a ValueError escaped
        ("n: 0x" + "f" * 5000, "integer of more than"),  # once crashed json.dumps later
        ("? 0x" + "f" * 5000 + "\n: key", "integer of more than"),
        ("d: !!timestamp ''", "AttributeError"),  # found by the fuzzer: escaped PyYAML
        ("- a list", "not a mapping"),
        ("x: !!python/object/apply:os.system ['true']", "bad YAML front matter"),
    ],
)
def test_malformed_cards(body: str, reason: str) -> None:
    with pytest.raises(RepoError, match=reason) as e:
        parse_card(REPO, f"---\n{body}\n---\n")
    assert e.value.path == "README.md"


def test_oversized_front_matter_refused_before_parsing(monkeypatch) -> None:
    body = "k: [" + "1," * (MAX_FRONT_MATTER_CHARS // 2) + "1]"
    composed = []  # front matter handed to PyYAML: the oversized one never is

    class Loader(yaml.SafeLoader):
        def __init__(self, stream) -> None:
            composed.append(stream)
            super().__init__(stream)

    monkeypatch.setattr(yaml, "SafeLoader", Loader)
    with pytest.raises(RepoError, match="character limit"):
        parse_card(REPO, f"---\n{body}\n---\n")
    assert composed == []
    assert parse_card(REPO, "---\nk: v\n---\n" + "x" * MAX_FRONT_MATTER_CHARS) == {"k": "v"}


def test_hub_crawl_rejects_the_bomb_with_its_reason(tmp_path: Path) -> None:
    for name, card in {"bomb": _bomb(9), "fine": "---\nbase_model: o/fine\n---\n"}.items():
        repo = tmp_path / "o" / name
        repo.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(repo / FILE))
        (repo / "README.md").write_text(card)
    records, rejected = crawl_all(LocalHubSource(tmp_path))
    assert [r.repo_id for r in records] == ["o/fine"]
    assert records[0].base_model == () and records[0].extra["ignored_base_model"]
    [bad] = rejected
    assert (bad.repo_id, bad.path) == ("o/bomb", "README.md")
    assert "aliases are expanded" in bad.reason


# ---- base_model ---------------------------------------------------------------------------------


def _header() -> dict[str, ParsedHeader]:
    body = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    return {FILE: parse_header(body, 8 + len(body) + 4, REPO, FILE)}


def _record(card: str, config: dict | None = None):
    return build_record(
        repo_id=REPO,
        source="local",
        kind="full",
        weights_file=FILE,
        files=[FILE, "README.md"],
        headers=_header(),
        sizes={FILE: 100},
        card_text=card,
        config_file="config.json" if config is not None else None,
        config_text=json.dumps(config) if config is not None else None,
    )


def test_self_named_base_model_is_dropped() -> None:
    r = _record(f"---\nbase_model: {REPO}\n---\n")
    assert r.base_model == () and r.extra == {"ignored_base_model": "names the repo itself"}
    r = _record(f"---\nbase_model: [{REPO}, org/real]\n---\n")
    assert r.base_model == ("org/real",) and "ignored_base_model" in r.extra
    # a self-named card does not hide the adapter config's base
    r = _record(f"---\nbase_model: {REPO}\n---\n", {"base_model_name_or_path": "org/base"})
    assert (r.base_model, r.base_model_relation) == (("org/base",), "adapter")
    r = _record("---\nbase_model: org/missing-repo\n---\n")  # a base nobody has: kept as a hint
    assert r.base_model == ("org/missing-repo",) and r.extra == {}
    assert base_models({"base_model": REPO}, {}) == ((REPO,), None)  # no repo_id: unchanged


@pytest.mark.parametrize(
    ("declared", "want"),
    [
        (3, ()),
        (1.5, ()),
        (None, ()),
        (True, ()),
        ({"org/name": 1}, ()),
        (["org/a", 7, {"x": 1}, None, "org/a", "org/b"], ("org/a", "org/b")),
        ("x" * 10_000, ()),
        ("org/" + "n" * 200, ()),
        ("/home/me/checkpoints/base", ()),
        ("../../etc/passwd", ()),
        ("https://huggingface.co/org/name", ()),
        ("org/name with spaces", ()),
        ("", ()),
        ("gpt2", ("gpt2",)),  # legacy ids without an org are real hub ids
        ("org/name", ("org/name",)),
    ],
)
def test_weird_base_model_values(declared: object, want: tuple) -> None:
    assert base_models({"base_model": declared}, {}, REPO)[0] == want
    assert base_models({}, {"base_model_name_or_path": declared}, REPO)[0] == (
        want[:1] if isinstance(declared, str) else ()
    )


@fuzz(200)
@given(json_any, json_any, json_any)
def test_base_models_never_crash(declared: object, relation: object, peft: object) -> None:
    card = {"base_model": declared, "base_model_relation": relation}
    names, rel = base_models(card, {"base_model_name_or_path": peft}, REPO)
    assert REPO not in names and len(set(names)) == len(names)
    assert all(isinstance(n, str) and 0 < len(n) < 200 for n in names)
    assert rel is None or isinstance(rel, str)


def test_declared_cycles_and_self_loops_do_not_crash_trees() -> None:
    edges = [
        ("o/root", None),
        ("o/child", "o/root"),
        ("o/a", "o/b"),
        ("o/b", "o/a"),  # a two-cycle
        ("o/x", "o/y"),
        ("o/y", "o/z"),
        ("o/z", "o/x"),  # a three-cycle
        ("o/tail", "o/a"),  # hangs off a cycle
        ("o/self", "o/self"),
        ("o/orphan", "org/missing-repo"),
    ]
    con = duckdb.connect()
    con.execute("CREATE TABLE repos(repo_id VARCHAR, base_model VARCHAR)")
    con.executemany("INSERT INTO repos VALUES (?, ?)", edges)
    sql = {r: (root, d) for r, root, d in trees_from_declared_edges_sql(con, "repos").fetchall()}
    assert sql == trees_from_declared_edges_networkx(edges)
    for repo in ("o/a", "o/b", "o/x", "o/y", "o/z", "o/tail"):
        assert sql[repo] == (None, None)
    assert sql["o/child"] == ("o/root", 1) and sql["o/self"] == ("o/self", 0)
    assert sql["o/orphan"] == ("o/orphan", 0)


# ---- safetensors metadata values ----------------------------------------------------------------

# fmt: off
LITERAL_TOKENS = [
    "[", "]", "{", "}", "(", ")", ",", ":", "'", '"', "1", "-1", "1.5", "1e999", "1j",
    "0x" + "f" * 3000, "9" * 4400, "None", "True", "...", "b'x'", "__import__", "('os')",
    ".system", "lambda: 0", "NaN", "Infinity", "\\u0000", "\\ud800", " ", "\n", "set()",
    "{1, 2}", "{[]: 1}",
]
# fmt: on
literalish = st.lists(st.sampled_from(LITERAL_TOKENS) | st.text(max_size=3), max_size=30).map(
    "".join
)


@fuzz(400)
@given(st.text(max_size=200) | literalish)
def test_metadata_values(value: str) -> None:
    try:
        out = decode_metadata_value(REPO, FILE, "k", value)
    except RepoError as e:
        assert e.path == FILE and "metadata 'k'" in e.reason
        return
    json.dumps(out)


CODE = [
    "__import__('os').system('touch {m}')",
    "[__import__('os').system('touch {m}')]",
    "{{'a': __import__('os').system('touch {m}')}}",
    "(lambda: open('{m}', 'w'))()",
    "[open('{m}', 'w').write('x')]",
    "[eval(\"open('{m}', 'w')\")]",
    "(exec(\"open('{m}', 'w')\"),)",
    "[f\"{{open('{m}', 'w')}}\"]",
    "['' .join(open('{m}', 'w'))]",
    "[().__class__.__base__.__subclasses__()]",
]


@fuzz(100)
@given(st.sampled_from(CODE), st.sampled_from(["", " ", "\n", "[", "(", "{'k': "]), st.booleans())
def test_metadata_code_never_runs(
    tmp_path_factory: pytest.TempPathFactory, template: str, prefix: str, close: bool
) -> None:
    marker = tmp_path_factory.getbasetemp() / "PWNED"
    value = (
        prefix
        + template.format(m=marker)
        + ({"[": "]", "(": ",)", "{'k': ": "}"}.get(prefix, "") if close else "")
    )
    try:
        out = decode_metadata_value(REPO, FILE, "k", value)
    except RepoError:
        pass
    else:
        assert out == value  # kept as an inert string, never evaluated
    card_or_error(f"---\nk: !!python/object/apply:os.system ['touch {marker}']\n---\n")
    assert not marker.exists()
