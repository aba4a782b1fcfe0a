"""Tests of mqsync.spool: the SQLite store-and-forward buffer."""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mqsync import spool as spool_module
from mqsync.errors import ConfigError, MqsyncError
from mqsync.spool import Spool, SpooledChunk, SpoolError

HELPERS = Path(__file__).parent / "crash_helpers"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "spool.db"


def contents(spool: Spool) -> list[tuple[str, bytes]]:
    return [(chunk.metric, chunk.payload) for chunk in spool.pending()]


def test_public_names_are_in_all():
    assert set(spool_module.__all__) == {"DEFAULT_MAX_BYTES", "Spool", "SpoolError", "SpooledChunk"}


def test_append_and_pending_keep_order(path):
    with Spool(path) as spool:
        ids = [spool.append(f"m{i % 3}", bytes([i]) * i, points=i) for i in range(10)]
        assert ids == sorted(ids)
        chunks = spool.pending()
        assert [c.id for c in chunks] == ids
        assert [(c.metric, c.payload, c.points) for c in chunks] == [
            (f"m{i % 3}", bytes([i]) * i, i) for i in range(10)
        ]
        assert len(spool) == spool.count() == 10
        assert spool.size_bytes() == sum(range(10))


def test_spooled_chunk_repr_hides_the_payload():
    chunk = SpooledChunk(7, "a.b", b"secret" * 10)
    assert "secret" not in repr(chunk)
    assert "60 bytes" in repr(chunk)
    assert chunk == SpooledChunk(7, "a.b", b"secret" * 10)


def test_pending_limit_and_after_id(path):
    with Spool(path) as spool:
        ids = spool.append_many([("m", b"%d" % i) for i in range(6)])
        assert [c.id for c in spool.pending(limit=2)] == ids[:2]
        assert [c.id for c in spool.pending(after_id=ids[1])] == ids[2:]
        assert [c.id for c in spool.pending(limit=3, after_id=ids[3])] == ids[4:]
        assert spool.pending(after_id=ids[-1]) == []


def test_ack_deletes_in_one_call_and_ignores_unknown_ids(path):
    with Spool(path) as spool:
        ids = spool.append_many([("m", b"x" * 10, 3) for _ in range(5)])
        assert spool.ack([ids[0], ids[2], 999_999]) == 2
        assert [c.id for c in spool.pending()] == [ids[1], ids[3], ids[4]]
        assert spool.ack([ids[0]]) == 0
        assert spool.ack([]) == 0
        assert spool.ack(iter(ids)) == 3
        assert len(spool) == 0 and spool.size_bytes() == 0


def test_ack_many_ids_in_batches(path):
    with Spool(path) as spool:
        ids = spool.append_many([("m", b"x")] * 1200)
        assert spool.ack(ids[:1100]) == 1100
        assert [c.id for c in spool.pending()] == ids[1100:]


def test_append_many_empty_and_with_points(path):
    with Spool(path) as spool:
        assert spool.append_many([]) == []
        ids = spool.append_many([("a", b"1"), ("b", b"22", 5)])
        assert [(c.metric, c.points) for c in spool.pending()] == [("a", 0), ("b", 5)]
        assert len(ids) == 2


def test_replay_after_reopen(path):
    with Spool(path) as spool:
        ids = spool.append_many([("m", b"%d" % i) for i in range(5)])
        spool.ack(ids[:2])
    with Spool(path) as spool:
        assert [c.id for c in spool.pending()] == ids[2:]
        assert len(spool) == 3
        assert spool.size_bytes() == 3
        assert spool.recovered_from is None


def test_ids_are_never_reused(path):
    with Spool(path) as spool:
        first = spool.append("m", b"a")
        spool.ack([first])
    with Spool(path) as spool:
        second = spool.append("m", b"b")
        assert second > first


def test_memory_spool(tmp_path):
    with Spool(":memory:") as spool:
        spool.append("m", b"x")
        assert len(spool) == 1
    assert not list(tmp_path.iterdir())


def test_wal_and_synchronous_modes(path, tmp_path):
    with Spool(path) as spool:
        conn = spool._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    with Spool(tmp_path / "full.db", synchronous="full") as spool:
        assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 0}, "max_bytes 0"),
        ({"max_bytes": -5}, "max_bytes -5"),
        ({"max_age": 0}, "max_age 0"),
        ({"synchronous": "OFF"}, "synchronous 'OFF'"),
    ],
)
def test_invalid_options(path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Spool(path, **kwargs)


def test_closed_spool_raises_and_close_is_idempotent(path):
    spool = Spool(path)
    spool.close()
    spool.close()
    assert spool.closed
    with pytest.raises(SpoolError, match="closed"):
        spool.append("m", b"x")
    with pytest.raises(SpoolError, match="closed"):
        spool.pending()
    assert isinstance(SpoolError("x"), MqsyncError)


def test_an_empty_spool_is_still_true(path):
    with Spool(path) as spool:
        assert len(spool) == 0
        assert spool


def test_second_user_of_the_file_is_refused(path, monkeypatch):
    monkeypatch.setattr(Spool, "_lock_timeout", 0.05)
    with Spool(path) as spool:
        spool.append("m", b"x")
        with pytest.raises(SpoolError, match="in use by another process"):
            Spool(path)
    with Spool(path) as spool:
        assert len(spool) == 1


def test_wrong_argument_types(path):
    with Spool(path) as spool:
        with pytest.raises(TypeError, match="payload must be bytes"):
            spool.append("m", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="metric must be str"):
            spool.append(b"m", b"x")  # type: ignore[arg-type]


# -- limits ------------------------------------------------------------------------------


def test_size_limit_drops_oldest_with_counts_and_one_warning(path, caplog):
    with Spool(path, max_bytes=1000) as spool:
        ids = [spool.append("m", bytes(200), points=10) for _ in range(5)]
        assert spool.size_bytes() == 1000
        with caplog.at_level(logging.WARNING, logger="mqsync.spool"):
            new = spool.append("m", bytes(450), points=7)
        assert [c.id for c in spool.pending()] == ids[3:] + [new]
        assert spool.size_bytes() == 850
        assert len(spool) == 3
        assert (spool.dropped_chunks, spool.dropped_points, spool.dropped_bytes) == (3, 30, 600)
        [record] = caplog.records
        message = record.getMessage()
        assert "dropped the 3 oldest chunks (30 points, 600 bytes)" in message
        assert str(path) in message and "max_bytes=1000" in message


def test_size_limit_drops_no_more_than_needed(path, caplog):
    caplog.set_level(logging.WARNING)
    with Spool(path, max_bytes=1000) as spool:
        ids = spool.append_many([("m", bytes(200))] * 5)
        spool.append("m", bytes(200))  # exactly one chunk must go
        assert [c.id for c in spool.pending()][:4] == ids[1:]
        assert spool.dropped_chunks == 1
        assert spool.size_bytes() == 1000


def test_warnings_are_rate_limited_and_summed(path, caplog):
    with caplog.at_level(logging.WARNING, logger="mqsync.spool"):
        spool = Spool(path, max_bytes=100, warn_interval=3600)
        for _ in range(10):
            spool.append("m", bytes(60), points=1)
        assert spool.dropped_chunks == 9
        assert len(caplog.records) == 1  # the first drop event
        spool.close()
    assert len(caplog.records) == 2  # the rest, at close
    assert "dropped the 8 oldest chunks" in caplog.records[1].getMessage()


def test_chunk_larger_than_the_limit_is_refused(path):
    with Spool(path, max_bytes=100) as spool:
        spool.append("m", bytes(50))
        with pytest.raises(ConfigError, match=r"101 bytes, more than max_bytes=100"):
            spool.append("m.big", bytes(101))
        assert len(spool) == 1


def test_batch_larger_than_the_limit_keeps_its_newest(path, caplog):
    with Spool(path, max_bytes=100) as spool:
        caplog.set_level(logging.WARNING)
        ids = spool.append_many([("m", bytes([i]) * 40) for i in range(5)])
        assert [c.id for c in spool.pending()] == ids[3:]
        assert spool.dropped_chunks == 3


def test_smaller_limit_on_reopen_drops_at_once(path, caplog):
    with Spool(path) as spool:
        spool.append_many([("m", bytes(100))] * 10)
    with caplog.at_level(logging.WARNING), Spool(path, max_bytes=350) as spool:
        assert len(spool) == 3
        assert spool.dropped_chunks == 7
    assert any("dropped the 7 oldest" in r.getMessage() for r in caplog.records)


def test_age_limit_with_injected_clock(path, caplog):
    clock = FakeClock()
    caplog.set_level(logging.WARNING)
    with Spool(path, max_age=60, clock=clock, max_bytes=None) as spool:
        old = spool.append_many([("m", b"o", 2)] * 3)
        clock.now += 30
        mid = spool.append("m", b"m", points=1)
        clock.now += 40  # the first three are now 70 s old
        assert [c.id for c in spool.pending()] == [mid]
        assert (spool.dropped_chunks, spool.dropped_points) == (3, 6)
        clock.now += 100
        new = spool.append("m", b"n")  # expiry on append too
        assert [c.id for c in spool.pending()] == [new]
        assert spool.dropped_chunks == 4
        assert old[0] < mid < new
    assert "max_age=60s" in caplog.records[0].getMessage()


def test_outage_longer_than_max_age_expires_on_open(path, caplog):
    clock = FakeClock()
    with Spool(path, clock=clock) as spool:
        spool.append("m", b"x")
    clock.now += 3600
    caplog.set_level(logging.WARNING)
    with Spool(path, clock=clock, max_age=600) as spool:
        assert len(spool) == 0
        assert spool.dropped_chunks == 1


# -- damaged files -----------------------------------------------------------------------


def filled_spool_bytes(path: Path) -> bytes:
    with Spool(path) as spool:
        spool.append_many([("m", os.urandom(1500)) for _ in range(40)])
    return path.read_bytes()


def damage(kind: str, path: Path) -> None:
    data = filled_spool_bytes(path)
    if kind == "garbage":
        path.write_bytes(os.urandom(8192))
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header-only":
        path.write_bytes(data[:100])
    elif kind == "overwritten-page":
        path.write_bytes(data[:8192] + os.urandom(4096) + data[12288:])
    elif kind == "text":
        path.write_text("this is not a database\n" * 100)
    elif kind == "other-schema":
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE measurements (t REAL, v REAL)")
        conn.commit()
        conn.close()


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "header-only", "overwritten-page", "text", "other-schema"]
)
def test_damaged_file_is_moved_aside_and_a_fresh_spool_starts(path, caplog, kind):
    damage(kind, path)
    damaged = path.read_bytes()
    wal = Path(str(path) + "-wal")
    wal.write_bytes(b"stale wal")
    with caplog.at_level(logging.ERROR, logger="mqsync.spool"), Spool(path) as spool:
        assert spool.recovered_from is not None
        assert spool.recovered_from.name.startswith("spool.db.corrupt-")
        assert spool.recovered_from.read_bytes() == damaged
        if kind in ("garbage", "text"):  # found before SQLite opens it: the -wal moves along
            assert Path(str(spool.recovered_from) + "-wal").read_bytes() == b"stale wal"
        assert len(spool) == 0
        spool.append("m", b"works")
        assert contents(spool) == [("m", b"works")]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(path) in record.getMessage()
    assert str(spool.recovered_from) in record.getMessage()
    with Spool(path) as spool:
        assert spool.recovered_from is None
        assert len(spool) == 1


def test_unreadable_path_is_an_error_not_damage(tmp_path):
    directory = tmp_path / "a-directory.db"
    directory.mkdir()
    with pytest.raises(SpoolError, match="a-directory.db"):
        Spool(directory)
    assert directory.is_dir()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_empty_file_becomes_a_spool(path):
    path.write_bytes(b"")
    with Spool(path) as spool:
        assert spool.recovered_from is None
        spool.append("m", b"x")


# -- threads -----------------------------------------------------------------------------


def test_appender_and_acker_threads(path):
    total = 2000
    acked: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    with Spool(path) as spool:

        def append() -> None:
            try:
                for i in range(total):
                    if i % 10 == 0:
                        spool.append_many([("m", b"%d" % (i + k)) for k in range(10)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        def ack() -> None:
            last = 0
            try:
                while True:
                    finished = done.is_set()
                    chunks = spool.pending(limit=50, after_id=last)
                    if chunks:
                        last = chunks[-1].id
                        acked.extend(int(c.payload) for c in chunks)
                        assert spool.ack(c.id for c in chunks) == len(chunks)
                    elif finished:
                        return
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=append), threading.Thread(target=ack)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert acked == list(range(total))
        assert len(spool) == 0 and spool.size_bytes() == 0
        assert spool.pending() == []


# -- model-based test --------------------------------------------------------------------


class SpoolMachine(RuleBasedStateMachine):
    """The spool against a deque: append, append_many, publish (read after a cursor, as
    the IO thread does), confirm, ack any, time passing, reopen (the cursor restarts)."""

    MAX_BYTES = 1500
    MAX_AGE = 100.0

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="mqsync-spool-")
        self.path = Path(self.directory) / "spool.db"
        self.clock = FakeClock()
        self.model: deque[tuple[int, str, bytes, float]] = deque()
        self.model_bytes = 0
        self.dropped = 0
        self.cursor = 0  # the id of the last chunk published
        self.in_flight: list[int] = []
        self.spool = self.open()

    def open(self) -> Spool:
        return Spool(
            self.path,
            max_bytes=self.MAX_BYTES,
            max_age=self.MAX_AGE,
            clock=self.clock,
            warn_interval=0,
        )

    def expire(self) -> None:
        cutoff = self.clock.now - self.MAX_AGE
        if self.model and self.model[0][3] < cutoff:
            while self.model and self.model[0][3] < cutoff:
                self.drop_left()

    def drop_left(self) -> None:
        _, _, payload, _ = self.model.popleft()
        self.model_bytes -= len(payload)
        self.dropped += 1

    def model_append(self, chunk_id: int, metric: str, payload: bytes) -> None:
        while self.model_bytes + len(payload) > self.MAX_BYTES:
            self.drop_left()
        self.model.append((chunk_id, metric, payload, self.clock.now))
        self.model_bytes += len(payload)

    @initialize()
    def quiet_logs(self) -> None:
        logging.getLogger("mqsync.spool").setLevel(logging.ERROR)

    @rule(metric=st.sampled_from(["a", "b.c"]), payload=st.binary(max_size=400))
    def append(self, metric: str, payload: bytes) -> None:
        self.expire()
        chunk_id = self.spool.append(metric, payload)
        if self.model:
            assert chunk_id > self.model[-1][0]
        self.model_append(chunk_id, metric, payload)

    @rule(payloads=st.lists(st.binary(max_size=200), max_size=5))
    def append_many(self, payloads: list[bytes]) -> None:
        self.expire()
        ids = self.spool.append_many([("m", p) for p in payloads])
        assert len(ids) == len(payloads)
        for chunk_id, payload in zip(ids, payloads):
            self.model_append(chunk_id, "m", payload)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = [entry[0] for entry in self.model]
        chosen = data.draw(st.lists(st.sampled_from(ids), max_size=len(ids)))
        removed = self.spool.ack(chosen)
        assert removed == len(set(chosen))
        gone = set(chosen)
        kept = [entry for entry in self.model if entry[0] not in gone]
        self.model = deque(kept)
        self.model_bytes = sum(len(entry[2]) for entry in kept)

    @rule(limit=st.integers(min_value=1, max_value=6))
    def publish(self, limit: int) -> None:
        self.expire()
        chunks = self.spool.pending(limit=limit, after_id=self.cursor)
        expected = [entry for entry in self.model if entry[0] > self.cursor][:limit]
        assert [(c.id, c.metric, c.payload) for c in chunks] == [e[:3] for e in expected]
        if chunks:
            self.cursor = chunks[-1].id
            self.in_flight.extend(c.id for c in chunks)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(min_value=1, max_value=len(self.in_flight)))
        confirmed, self.in_flight = self.in_flight[:count], self.in_flight[count:]
        held = {entry[0] for entry in self.model}
        # A chunk dropped by a limit while in flight is simply not there any more.
        assert self.spool.ack(confirmed) == len(held.intersection(confirmed))
        kept = [entry for entry in self.model if entry[0] not in set(confirmed)]
        self.model = deque(kept)
        self.model_bytes = sum(len(entry[2]) for entry in kept)

    @rule(seconds=st.floats(min_value=0, max_value=70))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = self.open()
        self.cursor, self.in_flight = 0, []  # a restarted source replays everything held
        self.expire()
        assert self.spool.recovered_from is None

    @invariant()
    def matches_the_model(self) -> None:
        self.expire()
        assert [(c.id, c.metric, c.payload) for c in self.spool.pending()] == [
            entry[:3] for entry in self.model
        ]
        assert len(self.spool) == len(self.model)
        assert self.spool.size_bytes() == self.model_bytes <= self.MAX_BYTES

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        logging.getLogger("mqsync.spool").setLevel(logging.NOTSET)


SpoolMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MQSYNC_SPOOL_EXAMPLES", "40")),
    stateful_step_count=25,
    deadline=None,
)
TestSpoolMachine = SpoolMachine.TestCase


# -- kill -9 -----------------------------------------------------------------------------


def payload_of(seq: int) -> bytes:
    """As in crash_helpers/spool_writer.py."""
    return seq.to_bytes(8, "big") + bytes([seq % 251]) * ((seq * 7919) % 3000)


def metric_of(seq: int) -> str:
    return f"test.metric.{seq % 7}"


def wait_for_open(out: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.read_text().startswith("O "):
            return
        if proc.poll() is not None:
            raise AssertionError(f"helper exited with {proc.returncode}: {out.read_text()}")
        time.sleep(0.002)
    raise AssertionError("helper did not open the spool in time")


@pytest.mark.slow
def test_spool_survives_kill_9_at_random_moments(tmp_path):
    """A helper appends numbered chunks and acks random ones until SIGKILLed at a random
    moment; after each kill the reopened spool holds every chunk whose append returned
    and whose ack did not, exactly once, in order, intact. Runs: $MQSYNC_SPOOL_CRASH_RUNS."""
    runs = int(os.environ.get("MQSYNC_SPOOL_CRASH_RUNS", "25"))
    rng = random.Random(os.environ.get("MQSYNC_CRASH_SEED", "6"))
    path, out = tmp_path / "spool.db", tmp_path / "out.txt"
    expected: dict[int, int] = {}  # chunk id -> seq, known to be held
    total_appended = total_acked = 0
    for run in range(runs):
        first_seq = (run + 1) * 10_000_000
        synchronous = "FULL" if run % 5 == 4 else "NORMAL"
        command = [sys.executable, str(HELPERS / "spool_writer.py"), str(path)]
        command += [str(first_seq), str(rng.randrange(2**32)), synchronous]
        proc = subprocess.Popen(command, stdout=out.open("w"), stderr=subprocess.STDOUT)
        wait_for_open(out, proc)
        time.sleep(rng.uniform(0, 0.08))
        proc.kill()
        assert proc.wait(30) == -9, out.read_text()[-2000:]

        in_flight: set[int] = set()
        reported_seqs: list[int] = []
        for line in out.read_text().split("\n")[:-1]:  # a cut-off last line is ignored
            kind, *fields = line.split()
            if kind == "A":
                chunk_id, seq = int(fields[0]), int(fields[1])
                expected[chunk_id] = seq
                reported_seqs.append(seq)
                total_appended += 1
            elif kind == "k":
                in_flight = {int(field) for field in fields}
            elif kind == "K":
                for chunk_id in in_flight:
                    del expected[chunk_id]
                total_acked += len(in_flight)
                in_flight = set()

        with Spool(path, max_bytes=None) as spool:
            assert spool.recovered_from is None, f"run {run}: spool was damaged"
            chunks = spool.pending()
        held = {chunk.id: chunk for chunk in chunks}
        seqs = [int.from_bytes(chunk.payload[:8], "big") for chunk in chunks]
        assert seqs == sorted(set(seqs)), f"run {run}: order broken or duplicates"
        for chunk, seq in zip(chunks, seqs):
            assert chunk.payload == payload_of(seq) and chunk.metric == metric_of(seq), run
        for chunk_id, seq in expected.items():
            if chunk_id not in in_flight:
                assert chunk_id in held, f"run {run}: chunk {seq} (id {chunk_id}) lost"
                assert seqs[chunks.index(held[chunk_id])] == seq
        last_reported = max(reported_seqs, default=first_seq - 1)
        for chunk, seq in zip(chunks, seqs):
            if chunk.id not in expected:  # an append in progress when killed
                assert first_seq <= seq and seq > last_reported, f"run {run}: stray chunk {seq}"
                assert seq <= last_reported + 5, f"run {run}: more than one batch in flight"
        expected = {chunk.id: seq for chunk, seq in zip(chunks, seqs)}
    assert total_appended > runs * 10, "the helper barely ran; the test proves little"
    print(f"{runs} kills: {total_appended} appends, {total_acked} acks seen, {len(expected)} held")
