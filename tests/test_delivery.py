"""The delivery core without a broker: the publisher and the IO thread on a transport that
confirms, nacks, drops and fails on command (tests/_fault_transport.py).

Each test names the defect it guards against; each failed before the delivery core was
rebuilt around delivery tags.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import time
import uuid

import kombu
import pytest

import mqsync
from mqsync._delivery import MAX_NACKS, ChunkPublisher
from mqsync.chunk import decode_chunk, encode_chunk
from mqsync.connection import IOThread
from mqsync.manager import Manager
from mqsync.spool import Spool
from tests import _fault_transport as ft
from tests._support import wait_until

T0 = 1_700_000_000_000_000_000
METRIC = "test.delivery"


def _network(name: str | None = None) -> ft.FaultState:
    """A fault-transport 'broker' with the data exchange and a queue catching everything."""
    state = ft.fault_state(name or f"d{uuid.uuid4().hex[:10]}")
    with kombu.Connection(state.url) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange="metricq.data", type="topic", durable=True,
                                 auto_delete=False)
        channel.queue_declare(queue="everything", durable=True, auto_delete=False)
        channel.queue_bind(queue="everything", exchange="metricq.data", routing_key="#")
    return state


class Publishing:
    """A ChunkPublisher on an IO thread of its own, as a Source wires them."""

    def __init__(self, state: ft.FaultState, *, max_pending: int = 1000, give_up: float = 30.0,
                 spool=None):
        self.counters: collections.Counter[str] = collections.Counter()
        self.publisher = ChunkPublisher("test", "metricq.data", max_pending=max_pending,
                                        spool=spool, count=self._count)
        self.fatal: list[BaseException] = []
        self.io = IOThread(state.url, "mqsync-test-data", self.publisher.setup, heartbeat=0,
                           give_up=give_up, on_fatal=self.fatal.append,
                           on_unblocked=self.publisher.resume)
        self.publisher.io = self.io

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def __enter__(self) -> Publishing:
        self.io.start(5)
        return self

    def __exit__(self, *exc_info) -> None:
        self.io.stop(5)

    def hand(self, index: int, points: int = 10) -> bytes:
        payload = encode_chunk([T0 + index * points + k for k in range(points)],
                               [float(index)] * points)
        assert self.publisher.reserve(5)
        self.publisher.hand(METRIC, payload, points)
        return payload


def _payloads(state: ft.FaultState, generation: int | None = None) -> list[bytes]:
    return [p.body for p in state.published if p.routing_key == METRIC
            and (generation is None or p.generation == generation)]


def test_a_publish_failing_under_a_connection_error_is_sent_again_once_and_confirmed_once():
    """Defect: the failed operation was re-run after the reconnect while setup() resent the
    backlog too: one chunk published twice, counted confirmed twice, flush() returning early
    and a BoundedSemaphore raising on the IO thread."""
    state = _network()
    with Publishing(state) as run:
        sent = [run.hand(i) for i in range(20)]
        assert run.publisher.wait_settled(5) == 0
        state.fail_next_publish(ConnectionResetError("cut under the publish"), routed=True)
        sent += [run.hand(i) for i in range(20, 50)]
        assert run.publisher.wait_settled(10) == 0
        assert run.io.reconnects == 1, "the connection error did not happen"
    publisher = run.publisher
    assert publisher.handed_chunks == publisher.confirmed_chunks == publisher.settled_chunks == 50
    assert publisher.confirmed_points == 500
    published = _payloads(state)
    assert set(published) == set(sent)
    # only the chunk written when the connection died arrives twice
    assert len(published) == 51
    assert [p for p, n in collections.Counter(published).items() if n > 1] == [sent[20]]


def test_confirms_are_matched_by_delivery_tag_not_by_counting():
    state = _network()
    state.confirms = "manual"
    with Publishing(state) as run:
        for i in range(5):
            run.hand(i)
        assert wait_until(lambda: len(state.published) == 5, 5)
        state.ack(3)
        assert wait_until(lambda: run.publisher.confirmed_chunks == 1, 5)
        assert run.publisher.confirmed_points == 10
        state.ack(2, multiple=True)  # tags 1 and 2; 3 is done already
        assert wait_until(lambda: run.publisher.confirmed_chunks == 3, 5)
        state.ack(5, multiple=True)
        assert run.publisher.wait_settled(5) == 0
        assert run.publisher.confirmed_chunks == 5


def test_a_nacked_chunk_is_sent_again_and_given_up_after_max_nacks():
    state = _network()
    state.confirms = "manual"
    with Publishing(state) as run:
        payload = run.hand(0)
        for attempt in range(1, MAX_NACKS + 1):
            assert wait_until(lambda attempt=attempt: len(state.published) == attempt, 5)
            state.nack(state.published[-1].tag)
        assert run.publisher.wait_settled(5) == 0
    assert _payloads(state) == [payload] * MAX_NACKS
    assert run.counters["nacked_chunks"] == MAX_NACKS
    assert run.counters["lost_points"] == 10
    assert run.publisher.confirmed_chunks == 0


def test_unconfirmed_chunks_are_resent_in_order_on_the_new_channel():
    state = _network()
    state.confirms = "drop"
    with Publishing(state) as run:
        sent = [run.hand(i) for i in range(10)]
        assert wait_until(lambda: len(state.published) == 10, 5)
        first = state.generation
        state.confirms = "auto"
        state.break_connection()
        assert run.publisher.wait_settled(10) == 0
    assert _payloads(state, state.generation) == sent
    assert state.generation > first
    assert run.counters["resent_chunks"] == 10


def test_unexpected_errors_in_the_loop_reconnect_with_backoff_not_in_a_hot_loop(monkeypatch):
    """Defect: any exception in the loop was retried at once, without backoff."""
    state = _network()
    drain = ft.Transport.drain_events
    exploding = threading.Event()

    def drain_events(self, connection, timeout=None):
        if exploding.is_set() and self.fault is state:
            raise RuntimeError("a bug, not a lost connection")
        return drain(self, connection, timeout)

    monkeypatch.setattr(ft.Transport, "drain_events", drain_events)
    with Publishing(state) as run:
        before = state.connects
        exploding.set()
        time.sleep(1.5)
        attempts = state.connects - before
        exploding.clear()
        assert wait_until(lambda: run.io.alive and run.io.generation > 1, 5)
    assert 2 <= attempts <= 8, f"{attempts} reconnects in 1.5 s"


def test_reconnect_attempts_follow_the_documented_backoff():
    """Defect: kombu retried inside each connect after 2 s, so attempts were 2-4 s apart."""
    state = _network()
    with Publishing(state, give_up=30) as run:
        state.refuse_connections = True
        state.break_connection()
        time.sleep(3.0)
        attempts = state.refused
        state.refuse_connections = False
        assert wait_until(lambda: run.io.reconnects == 1, 5)
    # pauses of 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6 s: at least 4 in 3 s
    assert attempts >= 4, f"only {attempts} attempts in 3 s"


def test_a_second_stop_writes_nothing_into_a_reused_descriptor(tmp_path):
    """Defect: a second stop() wrote a NUL byte into whatever file reused the closed wake
    pipe's descriptor number."""
    state = _network()
    io = IOThread(state.url, "mqsync-test-pipe", heartbeat=0)
    io.start(5)
    pipe = {io._wake_r, io._wake_w}
    io.stop(5)
    files = [os.open(tmp_path / f"file{i}", os.O_RDWR | os.O_CREAT) for i in range(4)]
    try:
        assert pipe & set(files), "no file got the pipe's old descriptor numbers"
        io.stop(5)
        io.post(lambda channel: None)
        io._wake()
        for fd in files:
            assert os.fstat(fd).st_size == 0
    finally:
        for fd in files:
            os.close(fd)


def test_the_wake_pipe_is_guarded_after_the_thread_ended_by_itself():
    state = _network()
    with Publishing(state, give_up=0.3) as run:
        state.refuse_connections = True
        state.break_connection()
        assert wait_until(lambda: run.fatal, 10), "the IO thread did not give up"
        run.io.post(lambda channel: None)  # dropped, not written into a closed pipe
        with pytest.raises(mqsync.ConnectFailed):
            run.io.submit(lambda channel: None).result(1)


# -- a Source on the fault transport, with the in-process manager -----------------------


@pytest.fixture
def network():
    state = _network()
    manager = Manager(state.url, token=f"manager-{state.name}")
    manager.start()
    yield state
    manager.stop()


def _accepted_and_delivered(state: ft.FaultState, metric: str) -> set[int]:
    times = set()
    for published in state.published:
        if published.routing_key == metric:
            times.update(decode_chunk(published.body)[0])
    return times


def test_stop_racing_send_accounts_for_every_accepted_point(network):
    """Defect: send() in one thread racing stop() in another returned normally for points
    that were never delivered nor counted lost."""
    source = mqsync.Source("source-race", network.url, chunk_size=10)
    source.start()
    accepted: list[int] = []
    refused: list[BaseException] = []

    def sender() -> None:
        for i in range(10_000_000):
            try:
                source.send("test.race", T0 + i, float(i))
            except mqsync.PublishFailed as error:
                refused.append(error)
                return
            accepted.append(T0 + i)

    thread = threading.Thread(target=sender)
    thread.start()
    assert wait_until(lambda: len(accepted) > 5000, 10)
    source.stop(10)
    thread.join(10)
    assert refused, "send() went on accepting points after stop()"
    delivered = _accepted_and_delivered(network, "test.race")
    assert delivered == set(accepted)
    assert source.stats()["lost_points"] == 0


def test_send_after_stop_raises_whatever_the_chunk_size(network):
    """Defect: with chunk_size > 1 a send() after stop() was silently buffered."""
    source = mqsync.Source("source-after", network.url, chunk_size=10)
    source.start()
    source.stop()
    with pytest.raises(mqsync.PublishFailed, match="stopped"):
        source.send("test.after", T0, 1.0)
    with pytest.raises(mqsync.PublishFailed):
        source.send_many("test.after", [T0], [1.0])


def test_a_time_that_does_not_fit_a_chunk_is_refused_before_it_is_buffered(network):
    """Defect: such a time was buffered and discarded its whole chunk when encoded."""
    with mqsync.Source("source-range", network.url, chunk_size=100) as source:
        for i in range(99):
            source.send("test.range", T0 + i, float(i))
        with pytest.raises(ValueError, match="out of range"):
            source.send("test.range", 2**63, 1.0)
        with pytest.raises(ValueError, match="out of range"):
            source.send_many("test.range", [T0, -(2**62)], [1.0, 2.0])
        source.flush(5)
    assert _accepted_and_delivered(network, "test.range") == {T0 + i for i in range(99)}


def test_a_spool_that_cannot_write_loses_nothing(network, tmp_path):
    """Defect: a failing spool append left a reserved slot and the chunk's points gone."""

    class FullDisk(Spool):
        def append(self, metric, payload, points):
            raise OSError(errno.ENOSPC, "No space left on device")

    spool = FullDisk(tmp_path / "spool.db")
    try:
        with mqsync.Source("source-full", network.url, chunk_size=10, spool=spool,
                           max_pending_chunks=3) as source:
            for i in range(200):
                source.send("test.full", T0 + i, float(i))
            source.flush(5)
            stats = source.stats()
    finally:
        spool.close()
    assert _accepted_and_delivered(network, "test.full") == {T0 + i for i in range(200)}
    assert stats["spool_errors"] == 20
    assert stats["lost_points"] == 0


def test_giving_up_counts_every_accepted_point_as_lost(network):
    """Defect: give-up discarded the chunks queued for the IO thread without counting them."""
    network.confirms = "drop"
    source = mqsync.Source("source-giveup", network.url, chunk_size=10, reconnect_timeout=0.5)
    source.start()
    try:
        for i in range(105):  # 10 chunks sent and never confirmed, 5 points buffered
            source.send("test.giveup", T0 + i, float(i))
        network.refuse_connections = True
        network.break_connection()
        assert source.wait(10), "the source did not give up"
        assert isinstance(source.failure, mqsync.ConnectFailed)
        with pytest.raises(mqsync.PublishFailed):
            source.send("test.giveup", T0 + 1000, 1.0)
    finally:
        network.refuse_connections = False
        source.stop(5)
    assert source.stats()["lost_points"] == 105


def test_stop_returns_within_its_timeout_while_the_broker_is_gone(network):
    """Defect: stop(timeout=5) took 58 s with the broker down: a sender held the buffer lock
    while it waited send_timeout for room."""
    network.confirms = "drop"
    source = mqsync.Source("source-slowstop", network.url, chunk_size=1, max_pending_chunks=5,
                           send_timeout=60, reconnect_timeout=60)
    source.start()
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for i in range(100):
                source.send("test.slowstop", T0 + i, float(i))
        except mqsync.PublishFailed as error:
            errors.append(error)

    thread = threading.Thread(target=sender)
    thread.start()
    assert wait_until(lambda: len(network.published) >= 5, 5)
    network.refuse_connections = True
    network.break_connection()
    began = time.monotonic()
    source.stop(timeout=1.0)
    took = time.monotonic() - began
    thread.join(5)
    network.refuse_connections = False
    assert took < 1.0 + 2.0, f"stop(timeout=1) took {took:.1f} s"
    assert errors, "the blocked sender was not woken"
    assert source.stats()["lost_points"] == 5


def test_stop_during_start_wins(network):
    """Defect: stop() during start() returned while the client went on running."""
    entered = threading.Event()

    class SlowToConfigure(mqsync.Source):
        @mqsync.rpc_handler("config")
        def on_config(self, **config):
            entered.set()
            time.sleep(0.5)

    source = SlowToConfigure("source-slowstart", network.url)
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            source.start()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - checked below
            outcome.append(error)

    thread = threading.Thread(target=start)
    thread.start()
    assert entered.wait(5)
    source.stop(timeout=5)
    alive = [t.name for t in threading.enumerate() if "source-slowstart" in t.name]
    thread.join(5)
    assert alive == [], f"threads still running after stop(): {alive}"
    assert isinstance(outcome[0], mqsync.ClientStopped)
    assert not source.running


def test_stats_always_say_lost_points_and_reconnects_per_connection(network):
    """Defect: lost_points was a KeyError until something was lost; the data connection's
    reconnects were missing."""
    with mqsync.Source("source-stats", network.url) as source:
        source.send("test.stats", T0, 1.0)
        source.flush(5)
        network.break_connection()  # every connection of the network
        source.send("test.stats", T0 + 1, 2.0)
        source.flush(5)
        assert wait_until(lambda: source.stats()["management_reconnects"] == 1, 5)
        stats = source.stats()
    assert stats["lost_points"] == 0
    assert stats["data_reconnects"] == 1
    assert stats["reconnects"] == 2
