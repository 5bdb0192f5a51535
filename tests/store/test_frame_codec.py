"""The frame codec: every supported dtype comes back exactly, and bad bytes are refused."""

import dataclasses
import json
import re
import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from qcal.store.codec import EncodedColumn, FrameCodecError, decode_frame, encode_frame

COLUMNS = {
    "float64 with nan and inf": pd.Series([1.5, np.nan, np.inf, -np.inf, -0.0, 1e-310]),
    "float32": pd.Series(np.array([0.1, np.nan, 3.0, 7.5, 1.0, 2.0], dtype=np.float32)),
    "int64 extremes": pd.Series([np.iinfo(np.int64).min, -1, 0, 1, 2, np.iinfo(np.int64).max]),
    "int8": pd.Series(np.array([-128, -1, 0, 1, 2, 127], dtype=np.int8)),
    "uint8": pd.Series(np.array([0, 1, 2, 128, 254, 255], dtype=np.uint8)),
    "bool": pd.Series([True, False, True, True, False, False]),
    "str with missing and unicode": pd.Series(["conv₁", "ü", None, "😀", "", "a\nb"]),
    "string (NA)": pd.Series(["x", None, "z", "ß", "q", "r"], dtype="string"),
    "object list cells": pd.Series([[0.1, 0.2], [], [1e-300, 5e300], [3], [1.0], [2.5, -0.5]]),
    "object mixed cells": pd.Series([1, "a", None, 2.5, True, {"k": [1, 2]}], dtype=object),
    "category": pd.Series(pd.Categorical(["b", "a", "b", None, "a", "b"], categories=["b", "a"], ordered=True)),
    "Int64 nullable": pd.Series([1, None, 3, 4, 5, 6], dtype="Int64"),
    "boolean nullable": pd.Series([True, None, False, True, True, False], dtype="boolean"),
    "datetime64": pd.Series(pd.to_datetime(["2024-01-01", None, "2025-06-30", "2024-01-02", "2024-01-03", "2024-01-04"])),
    "timedelta64": pd.Series(pd.to_timedelta([1, 2, None, 4, 5, 6], unit="s")),
}


def round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    return decode_frame(encode_frame(frame))


@pytest.mark.parametrize("name", list(COLUMNS))
def test_column_dtype_and_values_survive_a_round_trip(name):
    frame = pd.DataFrame({"c": COLUMNS[name]})
    assert_frame_equal(round_trip(frame), frame, check_dtype=True, check_exact=True)


def test_a_frame_of_all_supported_dtypes_round_trips_exactly():
    frame = pd.DataFrame(COLUMNS)
    assert_frame_equal(round_trip(frame), frame, check_dtype=True, check_exact=True)


def test_list_cells_come_back_as_lists_of_floats():
    frame = pd.DataFrame({"weight_scale": [[0.5, 0.25], [0.125]]})
    cells = round_trip(frame)["weight_scale"].tolist()
    assert cells == [[0.5, 0.25], [0.125]] and all(type(c) is list for c in cells)


def test_nan_and_inf_inside_list_cells_come_back():
    # assert_frame_equal compares list cells with ==, where nan != nan, so check by hand
    (cell,) = round_trip(pd.DataFrame({"c": [[np.nan, np.inf, 1.0]]}))["c"].tolist()
    assert np.isnan(cell[0]) and cell[1:] == [np.inf, 1.0]


def test_numpy_cells_in_object_columns_come_back_as_python_values():
    frame = pd.DataFrame({"c": [np.array([1.0, 2.0]), np.float32(0.5), np.int64(3)]})
    assert round_trip(frame)["c"].tolist() == [[1.0, 2.0], 0.5, 3]


@pytest.mark.parametrize(
    "index",
    [pd.RangeIndex(10, 16, 2), pd.Index(["a", "b", "c"], name="layer"),
     pd.MultiIndex.from_tuples([("s", 1), ("s", 2), ("t", 1)], names=["scheme", None])],
    ids=["range with start and step", "named str index", "multiindex"],
)  # fmt: skip
def test_index_is_kept(index):
    frame = pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=index)
    assert_frame_equal(round_trip(frame), frame, check_dtype=True)


def test_column_axis_name_and_object_dtype_are_kept():
    named = pd.DataFrame({"x": [1]}).rename_axis(columns="metric")
    object_labels = pd.DataFrame([[1, 2.0]], columns=pd.Index(["x", "y"], dtype=object))
    for frame in (named, object_labels):
        assert_frame_equal(round_trip(frame), frame, check_dtype=True, check_column_type=True)


@pytest.mark.parametrize(
    "frame",
    [pd.DataFrame(), pd.DataFrame({"a": pd.Series([], dtype="float64"), "b": pd.Series([], dtype=object)}),
     pd.DataFrame(index=pd.RangeIndex(4))],
    ids=["no rows no columns", "no rows", "rows without columns"],
)  # fmt: skip
def test_empty_frames_round_trip(frame):
    assert_frame_equal(round_trip(frame), frame, check_dtype=True)


@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.text(),
            st.lists(st.floats(allow_nan=False), max_size=4),
        ),
        max_size=20,
    )
)
@settings(max_examples=60, deadline=None)
def test_random_frames_round_trip(rows):
    frame = pd.DataFrame(
        {
            "f": pd.Series([r[0] for r in rows], dtype="float64"),
            "i": pd.Series([r[1] for r in rows], dtype="int64"),
            "s": pd.Series([r[2] for r in rows], dtype="str"),
            "l": pd.Series([r[3] for r in rows], dtype=object),
        }
    )
    assert_frame_equal(round_trip(frame), frame, check_dtype=True, check_exact=True)


def test_encoding_leaves_the_frame_untouched():
    frame = pd.DataFrame({"l": [[1.0], [2.0]], "v": [1.0, 2.0]}, index=pd.Index(["a", "b"], name="k"))
    before = frame.copy(deep=True)
    encode_frame(frame)
    assert_frame_equal(frame, before)


def test_equal_frames_encode_to_equal_digests():
    a = pd.DataFrame({"s": ["x", "y"], "v": [1.0, np.nan]})
    assert encode_frame(a).digest == encode_frame(a.copy()).digest
    assert encode_frame(a).digest != encode_frame(a.assign(v=[1.0, 2.0])).digest


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"t": pd.to_datetime(["2024-01-01"]).tz_localize("UTC")}), "column 't' has dtype datetime64"),
        (pd.DataFrame({"s": [{1, 2}]}), "column 's': cell value {1, 2} of type set is not storable"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), "frame columns must be unique strings"),
        (pd.DataFrame({0: [1]}), "frame columns must be unique strings"),
        (pd.DataFrame({"v": [1]}, index=pd.Index([0], name=("a", "b"))), "index and column-axis names must be strings or None"),
    ],
    ids=["tz-aware datetime", "set cell", "duplicate names", "int column name", "tuple index name"],
)
def test_unstorable_frames_are_refused_with_the_reason(frame, message):
    with pytest.raises(FrameCodecError, match="^" + message.replace("(", r"\(").replace("{", r"\{")):
        encode_frame(frame)


def _replace_column(encoded, **changes):
    column = dataclasses.replace(encoded.columns[0], **changes)
    return dataclasses.replace(encoded, columns=(column, *encoded.columns[1:]))


def test_a_flipped_byte_is_caught_by_the_checksum():
    encoded = encode_frame(pd.DataFrame({"v": [1.0, 2.0, 3.0]}))
    data = bytearray(encoded.columns[0].data)
    data[3] ^= 0x01
    with pytest.raises(FrameCodecError, match="checksum mismatch"):
        decode_frame(_replace_column(encoded, data=bytes(data)))


def test_a_raw_column_of_the_wrong_length_is_refused():
    encoded = encode_frame(pd.DataFrame({"v": [1.0, 2.0, 3.0]}))
    with pytest.raises(FrameCodecError, match=r"column 'v' holds 16 bytes, not 3 × 8"):
        decode_frame(_replace_column(encoded, data=encoded.columns[0].data[:16]))


def test_an_object_dtype_disguised_as_raw_numbers_is_refused():
    encoded = encode_frame(pd.DataFrame({"v": [1.0, 2.0]}))
    with pytest.raises(FrameCodecError, match=re.escape("dtype '|O' is not a raw numeric dtype")):
        decode_frame(_replace_column(encoded, dtype=json.dumps({"kind": "numpy", "dtype": "|O"})))


def test_a_decompression_bomb_is_stopped_at_the_size_cap():
    bomb = zlib.compress(b"[" + b"0," * 5_000_000 + b"0]")
    encoded = encode_frame(pd.DataFrame({"v": ["a"]}))
    bad = dataclasses.replace(encoded, n_rows=5_000_001, columns=(EncodedColumn("v", encoded.columns[0].dtype, "json", bomb),))
    with pytest.raises(FrameCodecError, match="exceed the size limit"):
        decode_frame(bad, max_bytes=1_000_000)


def test_string_columns_are_stored_as_a_dictionary_of_distinct_values():
    frame = pd.DataFrame({"layer": ["conv1", "conv2"] * 5000, "gone": pd.Series([None] * 10000, dtype="str")})
    layer = encode_frame(frame).columns[0]
    assert layer.encoding == "dict" and len(layer.data) < 1000  # 10,000 names in under 1 kB
    assert_frame_equal(round_trip(frame), frame, check_dtype=True)


def test_string_codes_outside_the_dictionary_are_refused():
    encoded = encode_frame(pd.DataFrame({"s": ["a"]}))
    bad = zlib.compress(b'["a"]\n' + np.array([5], dtype="<i4").tobytes())
    with pytest.raises(FrameCodecError, match=r"string codes do not index 1 values over 1 rows"):
        decode_frame(_replace_column(encoded, data=bad))
