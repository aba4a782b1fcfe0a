"""Delivery of a Source's chunks: publisher confirms, resending, and the spool.

Every chunk a Source hands over lives in exactly one place until it is settled::

    handed (any thread) -> backlog (IO thread, not yet published on this channel)
                        -> outstanding (published; keyed by its delivery tag)
                        -> settled: confirmed by the broker, or counted lost

Producers append to ``handed`` under one condition and wake the IO thread only when it
was empty, so a burst of chunks costs one wake-up.  The IO thread moves them to its
backlog and publishes from the head: a chunk leaves the backlog only once
``basic_publish`` returned, and enters ``outstanding`` under the delivery tag the broker
will confirm (tags count the publishes on one channel, from 1).  A lost connection
moves every outstanding chunk back to the head of the backlog, in order, and ``setup``
publishes them again on the new channel: nothing is published twice by a retry and a
resend at once, and a chunk whose confirm was lost with the connection arrives twice
(at-least-once).  A nack puts the chunk back too, up to :data:`MAX_NACKS` times; then
it is counted lost.

With a :class:`~mqsync.spool.Spool` every chunk is also written to disk before it is
handed over and deleted when confirmed, so a crash or a give-up loses nothing either:
the next start replays what is left.  If the spool cannot take a chunk (a full disk) it
is published from memory all the same, and the error counted.

Chunks are published persistent (delivery mode 2): in the durable queues of mqsync's
sinks they survive a broker restart; the transient queues of official sinks ignore it.
On transports without confirms (the in-process ``memory://``) a published chunk counts
as confirmed at once.  Nothing but this class may publish on the data channel it owns.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from .connection import IOThread
from .errors import PublishFailed

logger = logging.getLogger(__name__)

#: How often one chunk may be nacked by the broker before it is given up as lost.
MAX_NACKS = 10

PERSISTENT = 2
TRANSIENT = 1


class _Chunk:
    __slots__ = ("metric", "payload", "points", "spool_id", "nacks")

    def __init__(self, metric: str, payload: bytes, points: int, spool_id: int | None):
        self.metric = metric
        self.payload = payload
        self.points = points
        self.spool_id = spool_id
        self.nacks = 0


class ChunkPublisher:
    """Publishes a Source's chunks and keeps each until the broker confirmed it.

    Args:
        name: for log messages (the source's token).
        exchange: the data exchange.
        max_pending: chunks handed over and not yet settled before :meth:`reserve` waits.
        spool: an open :class:`~mqsync.spool.Spool`, or None.
        count: the owner's counter function ``count(name, amount)``.
        persistent: publish with delivery mode 2 (survives a broker restart in a durable
            queue) rather than 1.
    """

    def __init__(self, name: str, exchange: str, *, max_pending: int, spool: Any = None,
                 count: Callable[[str, int], None], persistent: bool = True):
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) \
                or max_pending < 1:
            raise ValueError(f"max_pending_chunks must be an int >= 1, got {max_pending!r}")
        self.name = name
        self.exchange = exchange
        self.spool = spool
        self.max_pending = max_pending
        self._count = count
        self._properties = {"delivery_mode": PERSISTENT if persistent else TRANSIENT}
        self.io: IOThread | None = None
        # Shared, under _cond:
        # Re-entrant: were a KeyboardInterrupt to land inside "with self._cond" on the
        # main thread, leaving it held (CPython cannot rule that out), that thread could
        # still go on, and each of its waits would let the IO thread in.
        self._cond = threading.Condition(threading.RLock())
        self._handed: collections.deque[_Chunk] = collections.deque()
        self._pump_posted = False
        self._in_flight = 0  # handed and not yet settled
        self._closed: tuple[type[Exception], str] | None = None
        self.handed_chunks = 0
        self.settled_chunks = 0
        self.confirmed_chunks = 0
        self.confirmed_points = 0
        # IO thread only:
        self._backlog: collections.deque[_Chunk] = collections.deque()
        self._outstanding: collections.OrderedDict[int, _Chunk] = collections.OrderedDict()
        self._next_tag = 1
        self._confirms = False

    # -- any thread ------------------------------------------------------------------

    def reserve(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: do not wait) for room for one more chunk.

        Returns False if there is none in time.

        Raises:
            PublishFailed, ClientStopped: the publisher takes no more chunks (the
                connection is down for good, or the source stops).
        """
        with self._cond:
            if self._in_flight < self.max_pending and self._closed is None:
                return True
            if timeout is None or timeout <= 0:
                self._raise_if_closed()
                return False
            deadline = time.monotonic() + timeout
            while self._in_flight >= self.max_pending and self._closed is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._raise_if_closed()
            return True

    def has_room(self) -> bool:
        """Whether a chunk handed now stays within ``max_pending``."""
        return self._in_flight < self.max_pending and self._closed is None

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            error_type, message = self._closed
            raise error_type(message)

    def hand(self, metric: str, payload: bytes, points: int,
             spool_id: int | None = None) -> None:
        """Take a chunk for publishing (after :meth:`reserve`, or at the final flush).

        Never raises and never waits: a chunk handed after :meth:`close` is still
        published while the IO thread runs, and settled by :meth:`abandon` otherwise.
        """
        if spool_id is None and self.spool is not None:
            spool_id = self._spool(metric, payload, points)
        chunk = _Chunk(metric, payload, points, spool_id)
        with self._cond:
            self._handed.append(chunk)
            self._in_flight += 1
            self.handed_chunks += 1
            post = not self._pump_posted
            self._pump_posted = True
        if post:
            assert self.io is not None
            self.io.post(self.pump)

    def _spool(self, metric: str, payload: bytes, points: int) -> int | None:
        assert self.spool is not None
        try:
            return int(self.spool.append(metric, payload, points))
        except Exception as error:  # a full or damaged disk: publish from memory anyway
            self._count("spool_errors", 1)
            logger.error("%s: could not write a chunk of %r to the spool (%s); it is sent "
                         "without it", self.name, metric, error)
            return None

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
                if not self.reserve(timeout):
                    raise PublishFailed(f"{self.name}: replaying the spool stalled for "
                                        f"{timeout:g} s")
                self.hand(row.metric, row.payload, row.points, spool_id=row.id)
                replayed += 1
            after = rows[-1].id
        if replayed:
            logger.warning("%s: replaying %d chunk(s) left in the spool %s", self.name,
                           replayed, self.spool.path)
            self._count("replayed_chunks", replayed)
        return replayed

    def wait_settled(self, timeout: float | None) -> int:
        """Wait until every chunk handed so far is settled; return how many are not."""
        with self._cond:
            target = self.handed_chunks
            self._cond.wait_for(lambda: self.settled_chunks >= target, timeout)
            return max(0, target - self.settled_chunks)

    def close(self, error_type: type[Exception], message: str) -> None:
        """Take no more reservations: waiting and later :meth:`reserve` calls raise."""
        with self._cond:
            if self._closed is None:
                self._closed = (error_type, message)
            self._cond.notify_all()

    def abandon(self) -> list[_Chunk]:
        """Settle every chunk not confirmed yet, and return them (oldest first).

        Call once the IO thread has ended (or from it, when it gave up).  The caller says
        what became of them: spooled ones stay in the spool for the next start.
        """
        with self._cond:
            chunks = list(self._outstanding.values()) + list(self._backlog) + list(self._handed)
            self._outstanding.clear()
            self._backlog.clear()
            self._handed.clear()
            self._settle(len(chunks))
        return chunks

    def _settle(self, chunks: int) -> None:
        """Under _cond: ``chunks`` left the pipeline for good."""
        self._in_flight -= chunks
        self.settled_chunks += chunks
        self._cond.notify_all()

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
        self._next_tag = 1
        if self._outstanding:
            resend = list(self._outstanding.values())
            self._outstanding.clear()
            self._backlog.extendleft(reversed(resend))
            self._count("resent_chunks", len(resend))
            logger.warning("%s: resending %d unconfirmed chunk(s) after reconnecting",
                           self.name, len(resend))
        self.pump(channel)

    def pump(self, channel: Any) -> None:
        """Publish what was handed over, in order (idempotent; runs on the IO thread)."""
        with self._cond:
            self._pump_posted = False
            if self._handed:
                self._backlog.extend(self._handed)
                self._handed.clear()
        io = self.io
        if io is not None and io.blocked:
            return  # the broker's alarm: keep everything until it lifts the block
        if io is None:
            self._publish_backlog(channel)
            return
        with io.corked():  # the whole backlog in one write (per MB), not one per chunk
            self._publish_backlog(channel)

    def _publish_backlog(self, channel: Any) -> None:
        backlog = self._backlog
        exchange = self.exchange
        properties = self._properties
        while backlog:
            chunk = backlog[0]
            channel.basic_publish(
                # a fresh properties dict: the memory transport keeps it in the message
                channel.prepare_message(chunk.payload, None, None, None, None,
                                        dict(properties)),
                exchange=exchange, routing_key=chunk.metric)
            backlog.popleft()
            if self._confirms:
                self._outstanding[self._next_tag] = chunk
                self._next_tag += 1
            else:
                self._confirmed([chunk])

    def resume(self) -> None:
        """On the IO thread, when the broker lifted its block: publish what waited."""
        if self.io is not None and self.io.channel is not None:
            self.pump(self.io.channel)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirmed(self._pop(delivery_tag, multiple))

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        chunks = self._pop(delivery_tag, multiple)
        if not chunks:
            return
        self._count("nacked_chunks", len(chunks))
        again: list[_Chunk] = []
        lost: list[_Chunk] = []
        for chunk in chunks:
            chunk.nacks += 1
            (lost if chunk.nacks >= MAX_NACKS else again).append(chunk)
        if again:
            logger.warning("%s: the broker refused %d chunk(s); sending them again", self.name,
                           len(again))
            self._backlog.extendleft(reversed(again))
        if lost:
            points = sum(c.points for c in lost)
            self._count("lost_points", points)
            logger.error("%s: the broker refused %d chunk(s) (%d points) %d times; they are "
                         "lost", self.name, len(lost), points, MAX_NACKS)
            self._forget_spooled(lost)
            with self._cond:
                self._settle(len(lost))
        assert self.io is not None
        self.pump(self.io.channel)

    def _pop(self, delivery_tag: int, multiple: bool) -> list[_Chunk]:
        outstanding = self._outstanding
        if not multiple:
            chunk = outstanding.pop(delivery_tag, None)
            return [chunk] if chunk is not None else []
        chunks = []
        while outstanding:
            tag = next(iter(outstanding))
            if tag > delivery_tag:
                break
            chunks.append(outstanding.pop(tag))
        return chunks

    def _forget_spooled(self, chunks: list[_Chunk]) -> None:
        if self.spool is None:
            return
        ids = [c.spool_id for c in chunks if c.spool_id is not None]
        if not ids:
            return
        try:
            self.spool.ack(ids)
        except Exception as error:  # a spool error must not stop delivery; the rows replay
            self._count("spool_errors", 1)
            logger.error("%s: could not delete %d settled chunk(s) from the spool: %s",
                         self.name, len(ids), error)

    def _confirmed(self, chunks: list[_Chunk]) -> None:
        if not chunks:
            return
        self._forget_spooled(chunks)
        points = sum(c.points for c in chunks)
        with self._cond:
            self.confirmed_chunks += len(chunks)
            self.confirmed_points += points
            self._settle(len(chunks))

