"""DataFrames to bytes and back, exactly, without pickle.

A stored run is shared between people and read back from untrusted files, so a frame is
written as plain data: each column becomes one ``EncodedColumn`` holding a JSON dtype spec and
the raw little-endian bytes of a numpy column (``raw``: float64, int64, bool, ...), a
zlib-compressed dictionary of distinct strings plus int32 codes (``dict``: str/string
columns, whose scheme and layer names repeat), or the zlib-compressed JSON list of its cells
(``json``: list-valued and mixed cells, nullable extension types, categoricals). Decoding never evaluates anything: it reads numbers, strings
and lists, checks every length against the row count, and rebuilds the same dtypes, so
``pandas.testing.assert_frame_equal(decode_frame(encode_frame(df)), df)`` holds with
``check_dtype=True``.

Cells of object columns go through JSON: str, int, float (NaN and ±inf included), bool,
None, lists and dicts round-trip as themselves; numpy scalars and arrays come back as Python
numbers and lists; tuples come back as lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["EncodedColumn", "EncodedFrame", "FrameCodecError", "decode_frame", "encode_frame"]

_RAW_KINDS = frozenset("biufcmM")  # numpy kinds stored as raw bytes (no object dtype)
_NULLABLE = frozenset(
    ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
     "Float32", "Float64", "boolean"]
)  # fmt: skip
_INDEX_PREFIX = "__index__"


class FrameCodecError(ValueError):
    """A frame cannot be encoded, or stored bytes do not decode to a valid frame."""


@dataclass(frozen=True)
class EncodedColumn:
    """One column as stored: its name, JSON dtype spec, encoding and bytes."""

    name: str
    dtype: str  # JSON, e.g. {"kind": "numpy", "dtype": "<f8"}
    encoding: str  # "raw" | "dict" | "json"
    data: bytes


@dataclass(frozen=True)
class EncodedFrame:
    """A whole frame as stored: row count, index layout (JSON), columns and a checksum.

    ``digest`` is the sha256 over every field before compression, so equal frames give equal
    digests whatever zlib version wrote them, and a flipped byte is caught on decoding.
    """

    n_rows: int
    layout: str
    columns: tuple[EncodedColumn, ...]
    digest: str


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"cell value {value!r} of type {type(value).__name__} is not storable")


def _dumps(values: Any) -> bytes:
    # ensure_ascii keeps lone surrogates and any unicode exact; NaN/inf use JSON's extension tokens
    return json.dumps(values, ensure_ascii=True, default=_json_default, allow_nan=True).encode()


def _cells(series: pd.Series) -> list[Any]:
    """Cells as JSON-able Python values; missing entries of non-object dtypes become None."""
    values = series.astype(object).tolist()
    if not (isinstance(series.dtype, np.dtype) and series.dtype.kind == "O"):
        values = [None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v for v in values]
    return values


def _dtype_spec(dtype: Any, column: str) -> dict[str, Any]:
    if isinstance(dtype, np.dtype) and dtype.kind in _RAW_KINDS:
        return {"kind": "numpy", "dtype": dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str}
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return {"kind": "object"}
    if isinstance(dtype, pd.StringDtype):
        return {"kind": "string", "storage": dtype.storage, "na": "NA" if dtype.na_value is pd.NA else "nan"}
    if isinstance(dtype, pd.CategoricalDtype):
        categories = pd.Series(dtype.categories)
        return {"kind": "category", "ordered": bool(dtype.ordered),
                "categories": _dtype_spec(categories.dtype, column), "values": _cells(categories)}  # fmt: skip
    if str(dtype) in _NULLABLE:
        return {"kind": "nullable", "dtype": str(dtype)}
    raise FrameCodecError(
        f"column {column!r} has dtype {dtype}, which the run store cannot keep exactly; accepted: "
        "numpy bool/int/uint/float/complex/datetime64/timedelta64, object (str, numbers, lists, "
        f"dicts, None), str/string, category, and nullable {sorted(_NULLABLE)}"
    )


def _encode_column(name: str, series: pd.Series, digest: Any) -> EncodedColumn:
    spec = _dtype_spec(series.dtype, name)
    try:
        if spec["kind"] == "numpy":
            encoding, payload = "raw", np.ascontiguousarray(series.to_numpy(), dtype=np.dtype(spec["dtype"])).tobytes()
        elif spec["kind"] == "string":  # repeated names (scheme, layer): a dictionary and int32 codes
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
            encoding, payload = "dict", _dumps(list(uniques)) + b"\n" + codes.astype("<i4").tobytes()
        elif spec["kind"] == "category":
            encoding, payload = "json", _dumps(series.cat.codes.tolist())
        else:
            encoding, payload = "json", _dumps(_cells(series))
        dtype = json.dumps(spec, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise FrameCodecError(f"column {name!r}: {err}") from err
    for part in (name, dtype, encoding):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(payload)
    return EncodedColumn(name, dtype, encoding, payload if encoding == "raw" else zlib.compress(payload, 1))


def encode_frame(frame: pd.DataFrame) -> EncodedFrame:
    """Encode a DataFrame into plain bytes that ``decode_frame`` turns back into an equal frame.

    Args:
        frame: any DataFrame with unique string column names. A default ``RangeIndex`` is
            recorded as such; any other index (also a MultiIndex) is stored as extra columns.

    Returns:
        The ``EncodedFrame``; ``frame`` itself is not modified.

    Raises:
        FrameCodecError: a column name is not a unique string, or a dtype or cell cannot be kept.
    """
    if not isinstance(frame, pd.DataFrame):
        raise FrameCodecError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    names = list(frame.columns)
    if not all(isinstance(c, str) and not c.startswith(_INDEX_PREFIX) for c in names) or len(set(names)) != len(names):
        raise FrameCodecError(f"frame columns must be unique strings not starting with {_INDEX_PREFIX!r}; got {names}")
    index = frame.index
    if isinstance(index, pd.RangeIndex):
        layout: dict[str, Any] = {"index": "range", "start": index.start, "step": index.step, "name": index.name}
        pieces = [(c, frame[c]) for c in names]
    else:
        levels = [f"{_INDEX_PREFIX}{i}" for i in range(index.nlevels)]
        layout = {"index": "columns", "levels": levels, "names": list(index.names)}
        flat = [(level, pd.Series(index.get_level_values(i), name=None)) for i, level in enumerate(levels)]
        pieces = flat + [(c, frame[c]) for c in names]
    if names:  # the column labels' own name and dtype (object vs str) are part of the frame too
        layout["columns"] = {"name": frame.columns.name, "object": frame.columns.dtype == object}
    names_ok = (n is None or isinstance(n, str) for n in [*index.names, layout.get("columns", {}).get("name")])
    if not all(names_ok):
        raise FrameCodecError(f"index and column-axis names must be strings or None; got {list(index.names)}, {frame.columns.name!r}")
    layout_json = json.dumps(layout, sort_keys=True, default=_json_default)
    digest = hashlib.sha256(f"{len(frame)}\0{layout_json}\0".encode())
    columns = tuple(_encode_column(name, series, digest) for name, series in pieces)
    return EncodedFrame(len(frame), layout_json, columns, digest.hexdigest())


def _inflate(data: bytes, budget: list[int]) -> bytes:
    inflater = zlib.decompressobj()
    payload = inflater.decompress(data, budget[0] + 1)
    if len(payload) > budget[0] or inflater.unconsumed_tail:
        raise FrameCodecError("decompressed frame data exceed the size limit")
    if not inflater.eof:
        raise FrameCodecError("compressed column data are truncated")
    budget[0] -= len(payload)
    return payload


def _series_from_json(values: list[Any], spec: dict[str, Any]) -> pd.Series:
    kind = spec["kind"]
    if kind == "object":
        array = np.empty(len(values), dtype=object)
        array[:] = values  # element-wise, so list cells stay lists instead of a 2-D array
        return pd.Series(array, dtype=object)
    if kind == "string":
        return pd.Series(pd.array(values, dtype=_string_dtype(spec)))
    if kind == "nullable" and spec["dtype"] in _NULLABLE:
        return pd.Series(pd.array(values, dtype=spec["dtype"]))
    if kind == "numpy":
        return pd.Series(np.array(values, dtype=_numpy_dtype(spec)))
    raise FrameCodecError(f"unknown dtype spec {spec!r}")


def _string_dtype(spec: dict[str, Any]) -> pd.StringDtype:
    na = pd.NA if spec["na"] == "NA" else np.nan
    try:
        dtype = pd.StringDtype(storage=spec["storage"], na_value=na)
        pd.array([], dtype=dtype)
        return dtype
    except ImportError:  # written where pyarrow backs str; this reader lacks pyarrow
        return pd.StringDtype(na_value=na)


def _strings_from_dict(payload: bytes, n_rows: int, spec: dict[str, Any]) -> pd.Series:
    head, _, tail = payload.partition(b"\n")  # ASCII-only JSON never holds a raw newline
    uniques, codes = json.loads(head), np.frombuffer(tail, dtype="<i4")
    if not isinstance(uniques, list) or not all(isinstance(u, str) for u in uniques):
        raise FrameCodecError("dictionary of a string column is not a list of strings")
    if len(codes) != n_rows or (n_rows and not -1 <= codes.min() <= codes.max() < len(uniques)):
        raise FrameCodecError(f"string codes do not index {len(uniques)} values over {n_rows} rows")
    strings = pd.array(uniques, dtype=_string_dtype(spec))
    return pd.Series(strings.take(codes.astype(np.intp), allow_fill=True))  # code -1: missing


def _numpy_dtype(spec: dict[str, Any]) -> np.dtype:
    dtype = np.dtype(str(spec["dtype"]))
    if dtype.kind not in _RAW_KINDS:
        raise FrameCodecError(f"dtype {spec['dtype']!r} is not a raw numeric dtype")
    return dtype


def _decode_column(column: EncodedColumn, n_rows: int, budget: list[int], digest: Any) -> pd.Series:
    spec = json.loads(column.dtype)
    if column.encoding == "raw" and spec.get("kind") == "numpy":
        dtype = _numpy_dtype(spec)
        if len(column.data) != n_rows * dtype.itemsize:
            raise FrameCodecError(f"column {column.name!r} holds {len(column.data)} bytes, not {n_rows} × {dtype.itemsize}")
        payload = column.data
        series = pd.Series(np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=True))
    elif column.encoding == "dict" and spec.get("kind") == "string":
        payload = _inflate(column.data, budget)
        series = _strings_from_dict(payload, n_rows, spec)
    elif column.encoding == "json":
        payload = _inflate(column.data, budget)
        values = json.loads(payload)
        if not isinstance(values, list) or len(values) != n_rows:
            raise FrameCodecError(f"column {column.name!r} does not hold a list of {n_rows} cells")
        if spec.get("kind") == "category":
            categories = _series_from_json(spec["values"], spec["categories"])
            cats = pd.Categorical.from_codes(values, categories=pd.Index(categories), ordered=spec["ordered"])
            series = pd.Series(cats)
        else:
            series = _series_from_json(values, spec)
    else:
        raise FrameCodecError(f"column {column.name!r} has unknown encoding {column.encoding!r}")
    for part in (column.name, column.dtype, column.encoding):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(payload)
    return series


def decode_frame(encoded: EncodedFrame, *, max_bytes: int = 1 << 40) -> pd.DataFrame:
    """Rebuild the DataFrame that ``encode_frame`` encoded, checking it on the way.

    Args:
        encoded: the stored frame (possibly from an untrusted file).
        max_bytes: cap on the total decompressed size of the JSON columns.

    Returns:
        A new DataFrame equal to the encoded one, dtypes included.

    Raises:
        FrameCodecError: lengths, dtypes or the checksum do not match: the data are corrupted
            or were not written by qcal.
    """
    try:
        layout = json.loads(encoded.layout)
        digest = hashlib.sha256(f"{encoded.n_rows}\0{encoded.layout}\0".encode())
        budget = [max_bytes]
        data = {c.name: _decode_column(c, encoded.n_rows, budget, digest) for c in encoded.columns}
        if len(data) != len(encoded.columns):
            raise FrameCodecError("duplicate column names")
        frame = pd.DataFrame(data) if data else pd.DataFrame(index=pd.RangeIndex(encoded.n_rows))
        if layout["index"] == "range":
            start, step = int(layout["start"]), int(layout["step"])
            frame.index = pd.RangeIndex(start, start + step * encoded.n_rows, step, name=layout["name"])
        else:
            frame = frame.set_index(layout["levels"])
            frame.index.names = layout["names"]
        if "columns" in layout:
            axis = layout["columns"]
            frame.columns = pd.Index(list(frame.columns), dtype=object if axis["object"] else None, name=axis["name"])
    except FrameCodecError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError, zlib.error) as err:
        raise FrameCodecError(f"stored frame is not valid: {type(err).__name__}: {err}") from err
    if digest.hexdigest() != encoded.digest:
        raise FrameCodecError("checksum mismatch: the stored frame data are corrupted")
    return frame
