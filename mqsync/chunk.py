"""DataChunk encoding and decoding, and the per-metric chunk buffer of a Source.

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
import sys
import time
from typing import Callable, Iterator, Sequence

from google.protobuf.message import DecodeError

from mqsync._proto.messages import DataChunk
from mqsync.errors import InvalidMessage

logger = logging.getLogger(__name__)

__all__ = ["ChunkBuffer", "decode_chunk", "encode_chunk", "iter_points"]

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


def _check_chunk_size(chunk_size: object) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"invalid chunk_size {chunk_size!r}: expected an int >= 1, or None to publish"
            " only on explicit flush"
        )


class ChunkBuffer:
    """The points of one metric waiting to be published by a Source.

    ``chunk_size`` is the number of points after which :meth:`append` reports the buffer full
    (the official client's default is 1); ``None`` means never full: the owner flushes it
    explicitly or after a flush interval, using :attr:`oldest_monotonic`.

    The buffer does no locking (the owning Source holds one lock around it) and no checking on
    the hot path: pass ``int`` nanoseconds and ``float`` values.  Points are kept in the order
    they were appended; times are not required to ascend (a negative delta is valid int64), but
    MetricQ readers expect ascending times, so a Source should not send out of order.

    Each :meth:`take` encodes a chunk that stands alone (its first delta is absolute), so a
    payload whose publish failed can be retried or spooled as is.
    """

    __slots__ = ("_chunk_size", "_limit", "_times", "_values", "_oldest", "_clock")

    def __init__(
        self, chunk_size: int | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        # One compare on the hot path for both cases: None can never be reached.
        self._limit = sys.maxsize if chunk_size is None else chunk_size
        self._times: list[int] = []
        self._values: list[float] = []
        self._oldest: float | None = None
        self._clock = clock

    @property
    def chunk_size(self) -> int | None:
        """Points per chunk, or ``None`` for explicit flushes only; settable."""
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, chunk_size: int | None) -> None:
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        self._limit = sys.maxsize if chunk_size is None else chunk_size

    @property
    def oldest_monotonic(self) -> float | None:
        """The clock (``time.monotonic()``) at the first append since the last take, or None."""
        return self._oldest

    def append(self, time_ns: int, value: float) -> bool:
        """Buffer one point; return True if the buffer now holds ``chunk_size`` points or more."""
        times = self._times
        if not times:
            self._oldest = self._clock()
        times.append(time_ns)
        self._values.append(value)
        return len(times) >= self._limit

    def extend(self, times_ns: Sequence[int], values: Sequence[float]) -> bool:
        """Buffer many points; return True if the buffer now holds ``chunk_size`` or more.

        The buffer may then hold more than ``chunk_size`` points; :meth:`take` encodes them all
        into one chunk.  Raises :class:`ValueError` (buffering nothing) if the lengths differ.
        """
        if len(times_ns) != len(values):
            raise ValueError(
                f"{len(times_ns)} times but {len(values)} values; expected one value per time"
            )
        if not times_ns:
            return len(self._times) >= self._limit
        if not self._times:
            self._oldest = self._clock()
        self._times.extend(times_ns)
        self._values.extend(values)
        return len(self._times) >= self._limit

    def __len__(self) -> int:
        return len(self._times)

    def truncate(self, length: int) -> None:
        """Drop the points appended after the first ``length`` (undo an append that failed)."""
        del self._times[length:]
        del self._values[length:]
        if not self._times:
            self._oldest = None

    def take(self) -> bytes | None:
        """Encode everything buffered as one standalone ``DataChunk`` and empty the buffer.

        Returns None if the buffer is empty.  If encoding fails (a time that is not an int, a
        value that is not a real number, a delta beyond int64) the buffered points are
        discarded and the :class:`TypeError` or :class:`ValueError` is raised: such points can
        never be encoded, and keeping them would make every later take fail too.  Validate
        points before :meth:`append` to never lose good ones this way.
        """
        times, values = self._times, self._values
        if not times:
            return None
        self._times = []
        self._values = []
        self._oldest = None
        try:
            return encode_chunk(times, values)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{exc}; the {len(times)} buffered points were discarded") from exc

    def __repr__(self) -> str:
        return f"ChunkBuffer(chunk_size={self._chunk_size!r}, pending={len(self._times)})"
