"""mqsync.chunk: the DataChunk codec."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from google.protobuf.internal import api_implementation
from hypothesis import example, given
from hypothesis import strategies as st

from mqsync._proto import DataChunk
from mqsync.chunk import check_chunk_size, decode_chunk, encode_chunk, iter_points
from mqsync.errors import InvalidMessage, MqsyncError

T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# From PROTOCOL.md ("Data").
GOLDEN = bytes.fromhex("0a0a8094ebdc038094ebdc031210000000000000f03f0000000000000440")
GOLDEN_CHUNK3 = bytes.fromhex(
    "0a138080a8b1e39fe7cb178094ebdc0380cab5ee0112180000000000000000000000000000f03f0000000000000040"
)


# The pure-Python protobuf runtime decodes every NaN as the canonical NaN; upb and cpp keep
# the bits.  On that runtime, NaNs are only compared as NaN.
PURE_PYTHON_RUNTIME = api_implementation.Type() == "python"


def bits(value: float) -> int:
    if PURE_PYTHON_RUNTIME and math.isnan(value):
        return -1
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def from_bits(pattern: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", pattern))[0]


# Every double, including NaNs with any payload and sign, reached through its bit pattern.
any_double = st.integers(0, 2**64 - 1).map(from_bits)
doubles = st.floats(allow_nan=True, allow_infinity=True) | any_double


# --- codec -------------------------------------------------------------------------------


def test_encode_golden() -> None:
    assert encode_chunk([SECOND, 2 * SECOND], [1.0, 2.5]) == GOLDEN


def test_decode_golden() -> None:
    assert decode_chunk(GOLDEN) == ([SECOND, 2 * SECOND], [1.0, 2.5])


def test_encode_decode_chunk3_golden() -> None:
    times = [T0, T0 + SECOND, T0 + SECOND + SECOND // 2]
    assert encode_chunk(times, [0.0, 1.0, 2.0]) == GOLDEN_CHUNK3
    assert decode_chunk(GOLDEN_CHUNK3) == (times, [0.0, 1.0, 2.0])


def test_empty_chunk() -> None:
    assert encode_chunk([], []) == b""
    assert decode_chunk(b"") == ([], [])


def test_encode_accepts_tuples_and_ints_as_values() -> None:
    assert encode_chunk((SECOND, 2 * SECOND), (1, 2.5)) == GOLDEN


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode_chunk(bytearray(GOLDEN)) == decode_chunk(GOLDEN)
    assert decode_chunk(memoryview(GOLDEN)) == decode_chunk(GOLDEN)


def test_decode_returns_plain_lists() -> None:
    times, values = decode_chunk(GOLDEN)
    assert type(times) is list and type(values) is list
    assert all(type(t) is int for t in times) and all(type(v) is float for v in values)


def test_iter_points() -> None:
    assert list(iter_points(GOLDEN)) == [(SECOND, 1.0), (2 * SECOND, 2.5)]


@pytest.mark.parametrize("payload", ["0a0a", 5, None, [1, 2]])
def test_decode_rejects_non_bytes(payload: object) -> None:
    with pytest.raises(InvalidMessage, match="payload is .*; expected bytes"):
        decode_chunk(payload)  # type: ignore[arg-type]


def test_iter_points_raises_at_call() -> None:
    with pytest.raises(InvalidMessage):
        iter_points(b"\xff\xff")


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        -math.nan,
        math.inf,
        -math.inf,
        -0.0,
        0.0,
        5e-324,
        -5e-324,
        2.2250738585072e-308,
        1.7976931348623157e308,
        from_bits(0x7FF0000000000001),
        from_bits(0xFFF8DEADBEEF0001),
    ],
)
def test_special_floats_round_trip_bit_exact(value: float) -> None:
    _, (decoded,) = decode_chunk(encode_chunk([T0], [value]))
    assert bits(decoded) == bits(value)


@given(st.lists(st.tuples(st.integers(INT64_MIN // 2, INT64_MAX // 2), doubles), max_size=50))
@example([(INT64_MIN // 2, math.nan), (INT64_MAX // 2, -0.0)])
def test_round_trip(points: list[tuple[int, float]]) -> None:
    times = [t for t, _ in points]
    values = [v for _, v in points]
    decoded_times, decoded_values = decode_chunk(encode_chunk(times, values))
    assert decoded_times == times
    assert [bits(v) for v in decoded_values] == [bits(v) for v in values]


@given(st.lists(st.integers(INT64_MIN, INT64_MAX), max_size=20))
def test_round_trip_full_int64_range_when_deltas_fit(times: list[int]) -> None:
    deltas = [b - a for a, b in zip([0, *times], times)]
    values = [0.5] * len(times)
    if all(INT64_MIN <= d <= INT64_MAX for d in deltas):
        assert decode_chunk(encode_chunk(times, values))[0] == times
    else:
        with pytest.raises(ValueError, match="int64"):
            encode_chunk(times, values)


def test_wire_deltas_are_first_absolute_then_differences() -> None:
    chunk = DataChunk.FromString(encode_chunk([T0, T0 + 5, T0 + 3], [1.0, 2.0, 3.0]))
    assert list(chunk.time_delta) == [T0, 5, -2]


def test_decodes_unpacked_repeated_fields() -> None:
    """Readers must accept unpacked repeated fields, as any protobuf encoder may send them."""
    unpacked = (
        b"\x08"
        + bytes([5])
        + b"\x08"
        + bytes([3])
        + b"\x11"
        + struct.pack("<d", 1.0)
        + b"\x11"
        + struct.pack("<d", 2.0)
    )
    assert decode_chunk(unpacked) == ([5, 8], [1.0, 2.0])


def test_decode_ignores_unknown_fields() -> None:
    payload = GOLDEN + b"\x18\x07"  # field 3, varint 7
    assert decode_chunk(payload) == ([SECOND, 2 * SECOND], [1.0, 2.5])


# --- malformed payloads ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff",
        b"\x0a\x05\x01",  # packed field longer than the payload
        GOLDEN[:-1],  # truncated inside the values
        GOLDEN[:5],  # truncated inside the deltas
        b"\x12\x03\x00\x00\x00",  # packed doubles not a multiple of 8 bytes
        b"\x08",  # tag without value
        b"\x08\x80",  # unterminated varint
    ],
)
def test_malformed_payload_raises_invalid_message(payload: bytes) -> None:
    with pytest.raises(InvalidMessage, match="malformed data chunk"):
        decode_chunk(payload)


@pytest.mark.parametrize(
    ("deltas", "values"), [([1, 2], [1.0]), ([1], [1.0, 2.0]), ([1], []), ([], [1.0])]
)
def test_mismatched_lengths_raise_invalid_message(deltas: list[int], values: list[float]) -> None:
    payload = DataChunk(time_delta=deltas, value=values).SerializeToString()
    with pytest.raises(InvalidMessage, match=f"{len(deltas)} time deltas but {len(values)} values"):
        decode_chunk(payload)


def test_invalid_message_is_an_mqsync_error() -> None:
    with pytest.raises(MqsyncError):
        decode_chunk(b"\xff")


@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_invalid_message(payload: bytes) -> None:
    try:
        times, values = decode_chunk(payload)
    except InvalidMessage:
        return
    assert len(times) == len(values)


@given(st.lists(st.tuples(st.integers(0, 2**62), doubles), min_size=1, max_size=20), st.data())
def test_truncated_payloads_never_raise_anything_else(points, data) -> None:
    payload = encode_chunk([t for t, _ in points], [v for _, v in points])
    cut = data.draw(st.integers(0, len(payload) - 1))
    with contextlib.suppress(InvalidMessage):
        decode_chunk(payload[:cut])


# --- encoding errors ---------------------------------------------------------------------


def test_encode_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 times but 1 values"):
        encode_chunk([1, 2], [1.0])


@pytest.mark.parametrize("bad_time", [1.5, "1", None, b"1"])
def test_encode_rejects_non_int_time(bad_time: object) -> None:
    with pytest.raises(TypeError, match="time at index 1 is .*expected int nanoseconds"):
        encode_chunk([T0, bad_time], [1.0, 2.0])  # type: ignore[list-item]


@pytest.mark.parametrize("bad_value", ["1.0", None, object()])
def test_encode_rejects_non_float_value(bad_value: object) -> None:
    with pytest.raises(TypeError, match="value at index 1 is .*expected a float"):
        encode_chunk([T0, T0 + 1], [1.0, bad_value])  # type: ignore[list-item]


def test_encode_rejects_time_beyond_int64() -> None:
    with pytest.raises(ValueError, match="time 9223372036854775808 ns at index 0 is out of"):
        encode_chunk([2**63], [1.0])


def test_encode_rejects_delta_beyond_int64() -> None:
    with pytest.raises(ValueError, match="at index 1 differs from the previous one"):
        encode_chunk([INT64_MIN, INT64_MAX], [1.0, 2.0])


# --- check_chunk_size --------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, -1, 1.0, "3", True, False, 2.5])
def test_invalid_chunk_size(chunk_size: object) -> None:
    with pytest.raises(ValueError, match=r"invalid chunk_size .*expected an int >= 1, or None"):
        check_chunk_size(chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 1000, None])
def test_valid_chunk_size(chunk_size: object) -> None:
    check_chunk_size(chunk_size)
