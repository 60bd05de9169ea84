"""Model cards' YAML front matter and config JSON, read as untrusted text.

`parse_card` is `yaml.safe_load` with its cost bounded before anything is built: the front
matter's size, the node count once aliases are expanded (an alias bomb is refused as text),
self-containing aliases, and integers too wide for JSON; PyYAML's stray exceptions become a
`RepoError` naming the card and the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import yaml

from probex_core.hub.records import RepoError

CARD_FILE = "README.md"

# YAML front matter limits. Pure-Python YAML reads about 0.3 MB/s, and the largest real cards
# (MTEB model-index tables: ~400 kB, ~50k nodes for 300 datasets) stay far below both caps.
MAX_FRONT_MATTER_CHARS = 2 * 1024 * 1024
# Nodes once aliases are expanded: an alias bomb ("billion laughs", 9 levels of 10 aliases)
# is tiny as text but 10**9 nodes as data; it is refused before any of it is built.
MAX_CARD_NODES = 1_000_000
# Ints wider than this cannot round-trip through JSON (str() refuses 4300+ digits).
MAX_INT_BITS = 10_000
_FRONT_MATTER = re.compile(r"^\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", re.DOTALL)


class _CardError(ValueError):
    """A front matter that parses but is refused (too large once expanded, cyclic, ...)."""


def _check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise _CardError(f"integer of more than {MAX_INT_BITS} bits")
    return value


def _plain(value: Any) -> Any:
    """YAML scalars (dates, ...) to JSON-representable values; containers recursively."""
    if isinstance(value, dict):
        return {
            str(_check_int(k) if isinstance(k, int) else k): _plain(v) for k, v in value.items()
        }
    if isinstance(value, set):  # !!set: sorted, so that a card reads the same on every run
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, int):
        return _check_int(value)
    if value is None or isinstance(value, str | float):
        return value
    return str(value)


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """Node count of a composed YAML graph with every alias expanded, refused past `limit`.

    Aliases make the composed graph a DAG (or, for an alias inside its own anchor, a cycle);
    sizes are memoised per node, so this costs one pass over the distinct nodes however
    large the expansion would be. Iterative: no recursion limit to hit.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children(node))
            if total > limit:
                raise _CardError(
                    f"more than {limit} nodes once aliases are expanded (an alias bomb?)"
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _CardError("an alias refers to the node that contains it (a cycle)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _load_front_matter(text: str) -> Any:
    """yaml.safe_load, with the alias expansion measured between composing and building."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node, MAX_CARD_NODES)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_card(repo_id: str, text: str | None, path: str = CARD_FILE) -> dict[str, Any]:
    """The model card's YAML front matter as a dict; {} when the card has none."""
    if not text:
        return {}
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}
    body = m.group(1)
    if len(body) > MAX_FRONT_MATTER_CHARS:
        raise RepoError(
            repo_id,
            path,
            f"YAML front matter of {len(body)} characters exceeds the "
            f"{MAX_FRONT_MATTER_CHARS}-character limit",
        )
    try:
        data = _plain(_load_front_matter(body))
    except _CardError as e:
        raise RepoError(repo_id, path, f"bad YAML front matter: {e}") from None
    except yaml.YAMLError as e:
        raise RepoError(repo_id, path, f"bad YAML front matter: {e}") from None
    except RecursionError:
        raise RepoError(repo_id, path, "bad YAML front matter: nested too deeply") from None
    except Exception as e:  # PyYAML's constructors are not exception-clean
        # e.g. `date: 2020-13-45` (ValueError), `!!timestamp ''` (AttributeError), an int of
        # more than 4300 digits (ValueError): the card is bad, the crawl goes on
        raise RepoError(repo_id, path, f"bad YAML front matter: {type(e).__name__}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RepoError(repo_id, path, "YAML front matter is not a mapping")
    return data


def parse_config(repo_id: str, path: str, text: str | None) -> dict[str, Any]:
    """config.json / adapter_config.json as a dict."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RepoError(repo_id, path, f"bad JSON: {e}") from None
    if not isinstance(data, dict):
        raise RepoError(repo_id, path, "config is not a JSON object")
    return data
