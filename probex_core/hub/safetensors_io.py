"""Safetensors headers parsed and validated by hand, and single tensors decoded from bytes.

The format is an 8-byte little-endian header length, a JSON header (tensor name → dtype,
shape, data offsets relative to the end of the header; optional string `__metadata__`), then
the raw bytes. Parsing it ourselves gives absolute byte offsets without loading any weight,
works the same on a local file and on bytes fetched by an HTTP range request, and lets every
number be checked before it is trusted (hub files are untrusted input).
"""

from __future__ import annotations

import json
import reprlib
import struct
from dataclasses import dataclass

import torch

from probex_core.hub.records import RepoError, TensorInfo

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
MAX_TENSOR_NAME = 1024
MAX_DIMS = 64  # torch and numpy refuse more dimensions than this
MAX_TENSOR_BYTES = 2**64  # byte lengths are computed only up to this (no giant products)

# safetensors dtype → (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U64": (torch.uint64, 8),
    "U32": (torch.uint32, 4),
    "U16": (torch.uint16, 2),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


@dataclass(frozen=True)
class ParsedHeader:
    """A validated header: tensor index with absolute offsets, raw metadata, raw bytes."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]  # the string→string __metadata__, undecoded
    header_bytes: bytes  # the 8-byte prefix + JSON, for fingerprints
    data_start: int  # 8 + header length


class _BriefRepr(reprlib.Repr):
    """Short reprs of untrusted values for error messages: a header can hold a 100 MB dtype
    string, and str() of an int past 4300 digits raises instead of printing."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxstring, self.maxother = 2, 8, 4, 60, 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 64:
            return f"{'-' if x < 0 else ''}<{x.bit_length()}-bit number>"
        return repr(x)


_brief = _BriefRepr().repr


def header_length(prefix: bytes, repo_id: str, path: str, file_size: int) -> int:
    """Length of the JSON header from the first 8 bytes, checked against limits and the file."""
    if len(prefix) < 8 or file_size < 8:
        raise RepoError(repo_id, path, f"truncated: {file_size} bytes, no safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise RepoError(repo_id, path, f"header of {n} bytes exceeds the {MAX_HEADER_BYTES} limit")
    if n < 2 or 8 + n > file_size:
        raise RepoError(
            repo_id, path, f"truncated: header claims {n} bytes but the file has {file_size}"
        )
    return n


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_header(header_json: bytes, file_size: int, repo_id: str, path: str) -> ParsedHeader:
    """Validate a header's JSON against the file size; return absolute tensor offsets.

    Checks: JSON object, known dtypes, non-negative integer shapes, offsets inside the data
    section, byte length equal to dtype size × element count, no two tensors overlapping.
    """
    n = len(header_json)
    data_start = 8 + n
    data_size = file_size - data_start
    try:
        raw = json.loads(header_json.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RepoError(repo_id, path, f"header is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise RepoError(repo_id, path, "header is not a JSON object")
    metadata = raw.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise RepoError(repo_id, path, "__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in raw.items():
        tensors[name] = _tensor_info(name, entry, data_start, data_size, repo_id, path)
    spans = sorted((t.start, t.end, t.name) for t in tensors.values() if t.end > t.start)
    for (_, prev_end, prev), (start, _, cur) in zip(spans, spans[1:], strict=False):
        if start < prev_end:
            raise RepoError(repo_id, path, f"tensors {prev!r} and {cur!r} overlap")
    prefix = struct.pack("<Q", n)
    return ParsedHeader(tensors, dict(metadata), prefix + header_json, data_start)


def _nbytes(shape: list[int], itemsize: int) -> int | None:
    """dtype size × element count, or None once it exceeds MAX_TENSOR_BYTES."""
    if 0 in shape:
        return 0
    n = itemsize
    for s in shape:
        n *= s
        if n > MAX_TENSOR_BYTES:
            return None
    return n


def _tensor_info(
    name: str, entry: object, data_start: int, data_size: int, repo_id: str, path: str
) -> TensorInfo:
    if not name or len(name) > MAX_TENSOR_NAME:
        raise RepoError(repo_id, path, f"invalid tensor name of length {len(name)}")
    if not isinstance(entry, dict):
        raise RepoError(repo_id, path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise RepoError(repo_id, path, f"tensor {name!r}: unsupported dtype {_brief(dtype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(s) is int and s >= 0 for s in shape)
    ):
        raise RepoError(repo_id, path, f"tensor {name!r}: bad shape {_brief(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
    ):
        raise RepoError(repo_id, path, f"tensor {name!r}: bad data_offsets {_brief(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise RepoError(repo_id, path, f"tensor {name!r}: bad data_offsets {_brief(offsets)}")
    if end > data_size:
        raise RepoError(
            repo_id,
            path,
            f"truncated: tensor {name!r} ends at byte {_brief(data_start + end)}, "
            f"file has {data_start + data_size}",
        )
    expected = _nbytes(shape, DTYPES[dtype][1])
    if end - begin != expected:
        needs = "more than 2**64" if expected is None else str(expected)
        raise RepoError(
            repo_id,
            path,
            f"tensor {name!r}: {end - begin} bytes, but {dtype} × {_brief(shape)} needs {needs}",
        )
    return TensorInfo(name, dtype, tuple(shape), path, data_start + begin, data_start + end)


def decode_tensor(info: TensorInfo, data: bytes) -> torch.Tensor:
    """Turn exactly the tensor's bytes into a tensor (little-endian, as safetensors stores)."""
    dtype, _ = DTYPES[info.dtype]
    if len(data) != info.end - info.start:
        raise ValueError(f"{info.name}: got {len(data)} bytes, expected {info.end - info.start}")
    if not data:
        return torch.empty(info.shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(info.shape)
