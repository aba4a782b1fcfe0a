"""DataChunk encoding and decoding.

A MetricQ data message is one protobuf ``DataChunk`` holding the points of one metric: in each
message the first ``time_delta`` is the absolute timestamp (int ns since the epoch) and every
further one is the difference to the previous point, so every message stands alone.

The codec is tuned for the upb protobuf runtime (``bench/bench_codec.py`` measures it): the
deltas are computed in one ``map(operator.sub, ...)`` pass and the repeated fields filled with
``extend`` (as fast as the keyword constructor for big chunks, faster for small ones); decoding
slices the repeated fields into lists and sums the deltas with :func:`itertools.accumulate`.
Most of the time goes into Python int arithmetic on 61-bit timestamps, not into protobuf.
"""

from __future__ import annotations

import itertools
import logging
import operator
import struct
from typing import Iterator, Sequence

from google.protobuf.message import DecodeError

from mqsync._proto.messages import DataChunk
from mqsync.errors import InvalidMessage

logger = logging.getLogger(__name__)

__all__ = ["check_chunk_size", "decode_chunk", "encode_chunk", "iter_points"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_DOUBLE = struct.Struct("<d")


def encode_chunk(times_ns: Sequence[int], values: Sequence[float]) -> bytes:
    """Serialize points of one metric into a ``DataChunk`` payload.

    ``times_ns`` are absolute timestamps (int ns since the epoch), ``values`` the values at the
    same index.  The payload holds the first time as is and every further one as the difference
    to its predecessor.  Times need not ascend (negative deltas are valid int64), but readers
    expect them to.  Every float, including NaN payloads, ±inf, -0.0 and subnormals, is kept
    bit for bit (on the pure-Python protobuf runtime the *decoder* turns every NaN into the
    canonical NaN).  No points give ``b""``.

    Raises :class:`ValueError` if the lengths differ or a time or delta does not fit in int64,
    :class:`TypeError` if a time is not an int or a value not a real number.
    """
    if len(times_ns) != len(values):
        raise ValueError(
            f"cannot encode data chunk: {len(times_ns)} times but {len(values)} values;"
            " expected one value per time"
        )
    try:
        # deltas[i] = times[i] - times[i-1], with times[-1] taken as 0; map() stops at the shorter.
        deltas = list(map(operator.sub, times_ns, [0, *times_ns]))
        chunk = DataChunk()
        chunk.time_delta.extend(deltas)
        chunk.value.extend(values)
        return chunk.SerializeToString()
    except (TypeError, ValueError) as exc:
        raise _explain_encode_error(times_ns, values, exc) from exc


def _explain_encode_error(
    times_ns: Sequence[int], values: Sequence[float], exc: Exception
) -> Exception:
    """Name the first point that cannot be encoded (only run when encoding failed)."""
    previous = 0
    for index, time_ns in enumerate(times_ns):
        try:
            time_ns = operator.index(time_ns)
        except TypeError:
            return TypeError(
                f"cannot encode data chunk: time at index {index} is {time_ns!r}"
                f" ({type(time_ns).__name__}); expected int nanoseconds since the epoch"
            )
        delta, previous = time_ns - previous, time_ns
        if not _INT64_MIN <= delta <= _INT64_MAX:
            if index == 0:
                return ValueError(
                    f"cannot encode data chunk: time {time_ns} ns at index 0 is out of the int64"
                    " range; expected a time within ±292 years of the epoch"
                )
            return ValueError(
                f"cannot encode data chunk: time {time_ns} ns at index {index} differs from the"
                f" previous one by {delta} ns, beyond int64; expected times less than 292 years"
                " apart"
            )
    for index, value in enumerate(values):
        try:
            # struct converts exactly as protobuf does (PyFloat_AsDouble).
            _DOUBLE.pack(value)
        except (TypeError, struct.error):
            return TypeError(
                f"cannot encode data chunk: value at index {index} is {value!r}"
                f" ({type(value).__name__}); expected a float"
            )
    return type(exc)(f"cannot encode data chunk: {exc}")


def decode_chunk(payload: bytes | bytearray | memoryview) -> tuple[list[int], list[float]]:
    """Parse a ``DataChunk`` payload into absolute times (int ns) and values.

    Times are the running sums of the deltas, starting from 0.  Raises
    :class:`~mqsync.errors.InvalidMessage` if the payload is not bytes-like, not a
    ``DataChunk``, or holds a different number of times and values.
    """
    if type(payload) is not bytes:
        # protobuf 4.x parses only bytes; copying a bytearray or memoryview is cheap.
        try:
            payload = bytes(memoryview(payload))
        except TypeError as exc:
            raise InvalidMessage(
                f"malformed data chunk: payload is {type(payload).__name__}; expected bytes"
            ) from exc
    try:
        chunk = DataChunk.FromString(payload)
    except (DecodeError, TypeError) as exc:
        raise InvalidMessage(
            f"malformed data chunk ({len(payload)} bytes): {exc}; expected a serialized"
            " metricq.DataChunk"
        ) from exc
    deltas = chunk.time_delta[:]
    values = chunk.value[:]
    if len(deltas) != len(values):
        raise InvalidMessage(
            f"malformed data chunk: {len(deltas)} time deltas but {len(values)} values;"
            " expected one value per time"
        )
    return list(itertools.accumulate(deltas)), values


def iter_points(payload: bytes | bytearray | memoryview) -> Iterator[tuple[int, float]]:
    """Decode a ``DataChunk`` payload into ``(time_ns, value)`` pairs, in message order.

    The whole payload is decoded before this returns, so a malformed one raises
    :class:`~mqsync.errors.InvalidMessage` here, not half way through the iteration.
    """
    times, values = decode_chunk(payload)
    return zip(times, values)


def check_chunk_size(chunk_size: object) -> None:
    """Raise :class:`ValueError` unless ``chunk_size`` is an int >= 1 or None."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"invalid chunk_size {chunk_size!r}: expected an int >= 1, or None to publish"
            " only on explicit flush"
        )
