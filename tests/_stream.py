"""A stream of points for tests that break something under it and count what arrives.

One Source sends N points at RATE points/s in chunks of CHUNK (times T0, T0+1, ... ns; each
value is its time's offset, so a value that does not match its time is caught).
:func:`analyse` counts what a receiver got: lost points, and duplicates, which must be whole
chunks (a chunk resent after a reconnect), never parts of one.
"""

from __future__ import annotations

import collections
import threading
import time

import mqsync
from tests._support import RecordingSink

T0 = 1_700_000_000_000_000_000
N = 100_000
RATE = 20_000  # points per second
CHUNK = 100


class RecordingDurableSink(RecordingSink, mqsync.DurableSink):
    """RecordingSink with a fixed token and sink.register (a DurableSink)."""


def analyse(times: list[int]) -> tuple[int, int, int]:
    """(received, lost, duplicates) of point times; duplicates must be whole chunks."""
    counts = collections.Counter(times)
    expected = set(range(T0, T0 + N))
    assert set(counts) <= expected, "points that were never sent arrived"
    lost = N - len(counts)
    duplicates = len(times) - len(counts)
    by_chunk: dict[int, set[int]] = collections.defaultdict(set)
    for t, n in counts.items():
        by_chunk[(t - T0) // CHUNK].add(n)
    partial = [k for k, ns in by_chunk.items() if len(ns) > 1]
    assert not partial, f"chunks {partial[:5]} arrived partly twice"
    return len(times), lost, duplicates


def values_match(points: list[tuple[str, int, float]]) -> bool:
    return all(v == float(t - T0) for _, t, v in points)


class Streamer(threading.Thread):
    """Sends N points at RATE points/s in chunks of CHUNK, paced by deadlines (no drift);
    sets ``third`` when a third of the points are out."""

    def __init__(self, source: mqsync.Source, metric: str):
        super().__init__(name="test-streamer", daemon=True)
        self.source = source
        self.metric = metric
        self.third = threading.Event()
        self.error: BaseException | None = None
        self.late_s = 0.0  # how far behind its schedule the stream fell at worst

    def run(self) -> None:
        try:
            start = time.monotonic()
            for k in range(0, N, CHUNK):
                due = start + k / RATE
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                else:
                    self.late_s = max(self.late_s, now - due)
                times = list(range(T0 + k, T0 + k + CHUNK))
                self.source.send_many(self.metric, times, [float(t - T0) for t in times])
                if k + CHUNK >= N // 3:
                    self.third.set()
        except BaseException as error:  # noqa: BLE001 - re-raised by the test
            self.error = error
            self.third.set()


def print_rows(header: tuple[str, ...], rows: list[tuple], widths: tuple[int, ...],
               left: int = 0) -> None:
    """Print a table: the first ``left`` columns aligned left, floats with 2 decimals."""
    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:<{w}}" if i < left else f"{c:>{w}}"
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print("\n" + line(list(header)))
    for row in rows:
        print(line([f"{c:.2f}" if isinstance(c, float) else ("-" if c is None else str(c))
                    for c in row]))
