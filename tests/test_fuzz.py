"""Fuzzing what comes off the wire: random and mutated data messages, RPC bodies and history
requests against a Sink, the manager and mqsync-db on the embedded network.

Properties checked for every case: nothing crashes (decoders raise only
``InvalidMessage``, RPCs are answered, history requests get a response), nothing hangs
(a good message sent right after arrives), nothing reconnects, a refused request changes
no state, and memory stays bounded over the whole run.

CI runs a fixed number of cases with a fixed seed (hypothesis' ``derandomize``), so a run
is repeatable.  For a longer, random run on a developer's machine::

    MQSYNC_FUZZ_EXAMPLES=20000 MQSYNC_FUZZ_RANDOM=1 python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid

import kombu
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqsync
from mqsync import embedded
from mqsync._proto import HistoryRequest
from mqsync.chunk import decode_chunk, encode_chunk
from mqsync.errors import InvalidMessage
from mqsync.rpc import decode_json
from tests._support import RecordingSink, wait_until

EXAMPLES = int(os.environ.get("MQSYNC_FUZZ_EXAMPLES", "400"))
settings.register_profile(
    "mqsync-fuzz", max_examples=EXAMPLES, deadline=None, database=None,
    derandomize=not os.environ.get("MQSYNC_FUZZ_RANDOM"), print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])
fuzz = settings.get_profile("mqsync-fuzz")

T0 = 1_700_000_000_000_000_000
MB = 1024 * 1024


# -- strategies ---------------

good_chunks = st.builds(
    lambda deltas, values: encode_chunk(
        [T0 + sum(deltas[: i + 1]) for i in range(len(deltas))], values[: len(deltas)]),
    st.lists(st.integers(0, 2**40), min_size=1, max_size=20),
    st.lists(st.floats(allow_nan=True), min_size=20, max_size=20))


@st.composite
def mutated(draw, seeds):
    """A valid body with bytes flipped, cut, inserted or repeated; or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    body = bytearray(draw(seeds))
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "varint"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if operation == "flip" and body:
            body[at] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del body[at:]
        elif operation == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "repeat":
            body.extend(body[at:at + 64] * draw(st.integers(1, 8)))
        else:  # a huge or negative varint where a length or a delta goes
            body[at:at] = draw(st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 9
                                                + b"\x01", b"\x12\x80\x80\x80\x80\x08"]))
    return bytes(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                      allow_infinity=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30)

FUNCTIONS = ["source.register", "source.declare_metrics", "sink.register", "sink.subscribe",
             "sink.unsubscribe", "sink.release", "history.register", "db.register",
             "db.subscribe", "get_metrics", "discover", "config", "no.such.function"]
ARGUMENT_NAMES = ["metrics", "dataQueue", "expires", "metadata", "durable", "end", "selector",
                  "format", "prefix", "infix", "limit", "historic", "hidden", "function",
                  "from_token", "name", "input"]


def metric_like():
    return st.sampled_from(["fuzz.a", "fuzz.b", "", "x" * 300, "fuzz.*", "#"]) | st.text(
        max_size=20)


rpc_arguments = st.dictionaries(
    st.sampled_from(ARGUMENT_NAMES) | st.text(max_size=10),
    json_values | st.lists(metric_like(), max_size=4)
    | st.dictionaries(metric_like(), st.dictionaries(st.text(max_size=8), json_values,
                                                     max_size=3), max_size=3),
    max_size=5)


# -- the embedded network, once for the module ---------------


@pytest.fixture(scope="module")
def net():
    """A Sink subscribed to ``fuzz.*`` metrics, a client, and a raw kombu channel."""
    token = f"fuzz-{uuid.uuid4().hex[:6]}"
    with RecordingSink(f"sink-{token}") as sink, mqsync.Client(f"client-{token}",
                                                               rpc_timeout=10) as client:
        sink.subscribe(["fuzz.data", "fuzz.sentinel"])
        with kombu.Connection(embedded.URL) as connection:
            channel = connection.channel()
            yield sink, client, channel, embedded.manager()


def publish(channel, body: bytes, exchange: str, routing_key: str, headers=None,
            **properties) -> None:
    message = channel.prepare_message(body, None, "application/octet-stream", "binary",
                                      headers or {}, properties)
    channel.basic_publish(message, exchange=exchange, routing_key=routing_key)


class Sentinel:
    """Sends a good chunk with a fresh time and waits for it: the target is alive."""

    def __init__(self):
        self.time = T0

    def check(self, sink, channel) -> None:
        self.time += 1
        publish(channel, encode_chunk([self.time], [1.0]), "metricq.data", "fuzz.sentinel")
        assert wait_until(lambda: ("fuzz.sentinel", self.time, 1.0) in sink.points[-50:], 2.0), \
            f"a good chunk sent after the fuzz case did not arrive within 2 s: {sink.stats()}"


@pytest.fixture(scope="module")
def rss():
    process = psutil.Process()
    start = process.memory_info().rss
    yield
    growth = (process.memory_info().rss - start) / MB
    assert growth < 300, f"memory grew by {growth:.0f} MB over the fuzz run"


# -- decoders ---------------


@fuzz
@given(mutated(good_chunks))
def test_decode_chunk_raises_only_invalid_message(body):
    try:
        times, values = decode_chunk(body)
    except InvalidMessage:
        return
    assert len(times) == len(values)
    assert all(isinstance(t, int) for t in times)


@fuzz
@given(st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 100_000).map(lambda depth: b"[" * depth + b"]" * depth))
def test_decode_json_raises_only_invalid_message(body):
    try:
        payload = decode_json(body)
    except InvalidMessage:
        return
    assert isinstance(payload, dict)


# -- a Sink ---------------


@fuzz
@given(body=mutated(good_chunks),
       headers=st.none() | st.fixed_dictionaries({}, optional={
           "compression": st.sampled_from(["application/x-gzip", "zlib", "bzip2", "x"]),
           "x-junk": st.text(max_size=20)}),
       kind=st.sampled_from([None, None, None, "end", "junk"]))
def test_a_sink_survives_any_data_message(net, rss, body, headers, kind):
    sink, _, channel, _ = net
    properties = {} if kind is None else {"type": kind}
    publish(channel, body, "metricq.data", "fuzz.data", headers=headers, **properties)
    SENTINEL.check(sink, channel)
    stats = sink.stats()
    assert stats["reconnects"] == 0 and sink.running and stats["rpc_handler_errors"] == 0


SENTINEL = Sentinel()


# -- the manager ---------------


def _manager_state(manager):
    store = manager.metadata
    with store._lock:
        return (json.dumps(store._metrics, sort_keys=True), json.dumps(store._queues,
                                                                       sort_keys=True),
                json.dumps(store._databases, sort_keys=True))


@fuzz
@given(function=st.sampled_from(FUNCTIONS), arguments=rpc_arguments)
def test_the_manager_answers_any_request_and_a_refusal_changes_nothing(net, rss, function,
                                                                       arguments):
    _, client, _, manager = net
    arguments.pop("function", None)
    before = _manager_state(manager)
    try:
        reply = client.rpc(function, timeout=10, **arguments)
    except mqsync.RPCError:
        assert _manager_state(manager) == before
    else:
        assert isinstance(reply, dict)
    assert manager.stats()["reconnects"] == 0 and manager.running


@fuzz
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
       | st.builds(lambda f, a: json.dumps({"function": f, **a}).encode(), json_values,
                   rpc_arguments),
       headers=st.none() | st.just({"compression": "application/x-gzip"}),
       reply_to=st.sampled_from([None, "", "nowhere-rpc", "management"]))
def test_the_manager_survives_any_rpc_body(net, rss, body, headers, reply_to):
    _, client, channel, manager = net
    before = manager.stats()
    properties = {"correlation_id": "fuzz", "app_id": "fuzzer"}
    if reply_to is not None:
        properties["reply_to"] = reply_to
    publish(channel, body, "metricq.management", "get_metrics", headers=headers, **properties)
    assert isinstance(client.get_metrics(timeout=5, metadata=False), dict)
    assert manager.stats()["reconnects"] == before["reconnects"] and manager.running


# -- mqsync-db's history requests ---------------


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """mqsync-db on the embedded network, keeping a metric with ordinary and edge values
    (``fuzz.h``) and one the fuzzer sends chunks to (``fuzz.db``)."""
    from mqsync.db.server import Db

    token = f"db-fuzz-{uuid.uuid4().hex[:6]}"
    path = tmp_path_factory.mktemp("fuzzdb") / "fuzz.sqlite"
    with Db(token, database=path, metrics=["fuzz.h", "fuzz.db", "fuzz.dbsentinel"]) as db, \
            mqsync.Source(f"source-{token}") as source, \
            kombu.Connection(embedded.URL) as connection:
        values = [1.0, math.inf, -math.inf, math.nan, -2.5, 0.0] * 50
        source.send_many("fuzz.h", [T0 + i * 250_000_000 for i in range(len(values))], values)
        source.flush()
        assert wait_until(lambda: db.stats().get("stored_points", 0) >= 250, 10), db.stats()
        yield db, connection.channel()


int64 = st.integers(-2**63, 2**63 - 1)
history_requests = st.builds(
    lambda start, end, interval, kind: HistoryRequest(
        start_time=start, end_time=end, interval_max=interval, type=kind).SerializeToString(),
    int64 | st.integers(T0 - 10**10, T0 + 10**11), int64 | st.integers(T0, T0 + 10**11),
    int64 | st.integers(0, 10**10), st.integers(0, 3))


@fuzz
@given(body=history_requests | mutated(history_requests),
       metric=st.sampled_from(["fuzz.h", "fuzz.unknown", ""]))
def test_mqsync_db_answers_any_history_request(database, body, metric):
    db, _ = database
    response = db.history_response(metric, body)
    assert response.metric == metric
    if response.error:
        assert not response.error.startswith("internal error"), response.error
    assert db.stats().get("history_request_errors", 0) == 0


DB_SENTINEL = [T0]


@fuzz
@given(body=mutated(good_chunks), kind=st.sampled_from([None, None, "end"]))
def test_mqsync_db_survives_any_data_message(database, rss, body, kind):
    db, channel = database
    stored = db.stats().get("stored_points", 0)
    publish(channel, body, "metricq.data", "fuzz.db", **({} if kind is None else {"type": kind}))
    DB_SENTINEL[0] += 1
    publish(channel, encode_chunk([DB_SENTINEL[0]], [1.0]), "metricq.data", "fuzz.dbsentinel")
    # the sentinel is stored after the fuzz case (one queue, in order): it was handled
    assert wait_until(lambda: db.stats().get("stored_points", 0) > stored, 2.0), db.stats()
    assert db.running and db.failure is None


def test_the_packing_of_edge_floats_round_trips():
    """The fuzzers' values include NaN and infinities; the codec keeps their bits."""
    values = [math.inf, -math.inf, 0.0, -0.0, 5e-324, 1.7976931348623157e308]
    times, decoded = decode_chunk(encode_chunk(list(range(T0, T0 + len(values))), values))
    assert [struct.pack("<d", v) for v in decoded] == [struct.pack("<d", v) for v in values]
