"""Delivery of a Source's chunks: publisher confirms, resending, and the spool.

A chunk is *handed* (by the thread that filled it), *emitted* (published by the data IO
thread) and *confirmed* (the broker acked it).  Until it is confirmed it stays here: a
lost connection resends every unconfirmed chunk, in order, on the new channel, so
nothing is lost while the client reconnects (a chunk whose confirm was lost with the
connection arrives twice: at-least-once).  With a :class:`~mqsync.spool.Spool` every
chunk is also written to disk before it is handed over and deleted when confirmed, so a
crash or a give-up loses nothing either: the next start replays what is left.

On transports without confirms (the in-process ``memory://``) a published chunk counts
as confirmed at once.

Confirms are numbered per channel, one number per ``basic_publish``: nothing but this
class may publish on the data channel it owns.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

from .connection import IOThread
from .errors import PublishFailed

logger = logging.getLogger(__name__)


class _Chunk:
    __slots__ = ("metric", "payload", "points", "spool_id")

    def __init__(self, metric: str, payload: bytes, points: int, spool_id: int | None):
        self.metric = metric
        self.payload = payload
        self.points = points
        self.spool_id = spool_id


class ChunkPublisher:
    """Publishes a Source's chunks and keeps each until the broker confirmed it.

    Args:
        name: for log messages (the source's token).
        exchange: the data exchange.
        max_pending: chunks handed over and not yet confirmed before :meth:`hand` blocks.
        spool: an open :class:`~mqsync.spool.Spool`, or None.
        count: the owner's counter function ``count(name, amount)``.
    """

    def __init__(self, name: str, exchange: str, *, max_pending: int, spool: Any = None,
                 count: Callable[[str, int], None]):
        self.name = name
        self.exchange = exchange
        self.spool = spool
        self._count = count
        self._slots = threading.BoundedSemaphore(max_pending)
        self.io: IOThread | None = None
        # IO thread only:
        self._backlog: collections.deque[_Chunk] = collections.deque()
        self._outstanding: collections.OrderedDict[int, _Chunk] = collections.OrderedDict()
        self._next_seq = 1
        self._confirms = False
        # shared, under _progress:
        self._progress = threading.Condition()
        self.handed_chunks = 0
        self.confirmed_chunks = 0
        self.confirmed_points = 0

    # -- any thread ------------------------------------------------------------------

    def reserve(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: do not wait) for room for one more chunk.

        Raises:
            PublishFailed: the data connection is down for good.
        """
        io = self.io
        if io is None or not io.alive:
            raise PublishFailed(f"{self.name}: the data connection is down for good")
        if timeout is None:
            return self._slots.acquire(blocking=False)
        return self._slots.acquire(timeout=timeout)

    def hand(self, metric: str, payload: bytes, points: int) -> None:
        """Take a chunk for publishing, after a successful :meth:`reserve`."""
        spool_id = self.spool.append(metric, payload, points) if self.spool is not None else None
        with self._progress:
            self.handed_chunks += 1
        chunk = _Chunk(metric, payload, points, spool_id)
        assert self.io is not None
        self.io.post(lambda channel: self._emit_new(channel, chunk))

    def replay_spool(self, timeout: float) -> int:
        """Hand over, in order, what the spool still holds from an earlier run."""
        if self.spool is None:
            return 0
        replayed = 0
        after = 0
        while True:
            rows = self.spool.pending(limit=1000, after_id=after)
            if not rows:
                break
            for row in rows:
                if not self._slots.acquire(timeout=timeout):
                    raise PublishFailed(f"{self.name}: replaying the spool stalled for "
                                        f"{timeout:g} s")
                with self._progress:
                    self.handed_chunks += 1
                chunk = _Chunk(row.metric, row.payload, row.points, row.id)
                assert self.io is not None
                self.io.post(lambda channel, chunk=chunk: self._emit_new(channel, chunk))
                replayed += 1
            after = rows[-1].id
        if replayed:
            logger.warning("%s: replaying %d chunk(s) left in the spool %s", self.name,
                           replayed, self.spool.path)
            self._count("replayed_chunks", replayed)
        return replayed

    def wait_confirmed(self, timeout: float | None) -> int:
        """Wait until every chunk handed so far is confirmed; return how many are not."""
        with self._progress:
            target = self.handed_chunks
            self._progress.wait_for(lambda: self.confirmed_chunks >= target, timeout)
            return max(0, target - self.confirmed_chunks)

    def unconfirmed(self) -> tuple[int, int]:
        """Chunks and points handed over and not confirmed (call after the IO thread ended)."""
        chunks = list(self._backlog) + list(self._outstanding.values())
        return len(chunks), sum(c.points for c in chunks)

    # -- the IO thread -----------------------------------------------------------------

    def setup(self, channel: Any) -> None:
        """After every (re)connect: check the exchange, enable confirms, resend."""
        channel.exchange_declare(exchange=self.exchange, type="topic", durable=True,
                                 auto_delete=False, passive=True)
        self._confirms = hasattr(channel, "confirm_select")
        if self._confirms:
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
        self._next_seq = 1
        if self._outstanding:
            resend = list(self._outstanding.values())
            self._outstanding.clear()
            self._backlog.extendleft(reversed(resend))
            self._count("resent_chunks", len(resend))
            logger.warning("%s: resending %d unconfirmed chunk(s) after reconnecting",
                           self.name, len(resend))
        self._emit_backlog(channel)

    def _emit_new(self, channel: Any, chunk: _Chunk) -> None:
        self._backlog.append(chunk)
        self._emit_backlog(channel)

    def _emit_backlog(self, channel: Any) -> None:
        backlog = self._backlog
        while backlog:
            chunk = backlog[0]
            channel.basic_publish(
                # a fresh properties dict: the memory transport keeps it in the message
                channel.prepare_message(chunk.payload, None, None, None, None,
                                        {"delivery_mode": 1}),
                exchange=self.exchange, routing_key=chunk.metric)
            backlog.popleft()
            if self._confirms:
                self._outstanding[self._next_seq] = chunk
                self._next_seq += 1
            else:
                self._confirmed([chunk])

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirmed(self._pop(delivery_tag, multiple))

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        chunks = self._pop(delivery_tag, multiple)
        self._count("nacked_chunks", len(chunks))
        logger.warning("%s: the broker refused %d chunk(s); sending them again", self.name,
                       len(chunks))
        self._backlog.extend(chunks)
        assert self.io is not None
        self._emit_backlog(self.io.channel)

    def _pop(self, delivery_tag: int, multiple: bool) -> list[_Chunk]:
        outstanding = self._outstanding
        if not multiple:
            chunk = outstanding.pop(delivery_tag, None)
            return [chunk] if chunk is not None else []
        chunks = []
        while outstanding:
            seq = next(iter(outstanding))
            if seq > delivery_tag:
                break
            chunks.append(outstanding.pop(seq))
        return chunks

    def _confirmed(self, chunks: list[_Chunk]) -> None:
        if not chunks:
            return
        if self.spool is not None:
            ids = [c.spool_id for c in chunks if c.spool_id is not None]
            try:
                self.spool.ack(ids)
            except Exception:  # a spool error must not stop delivery; the rows replay later
                self._count("spool_errors", 1)
                logger.exception("%s: could not delete %d confirmed chunk(s) from the spool",
                                 self.name, len(ids))
        with self._progress:
            self.confirmed_chunks += len(chunks)
            self.confirmed_points += sum(c.points for c in chunks)
            self._progress.notify_all()
        for _ in chunks:
            self._slots.release()
