"""Hostile and careless input: nothing a peer sends hurts a client, the manager or others.

Each test makes the bad input happen for real (raw messages published with kombu, RPCs a
correct client would never send) and then proves the target still works: a good message
sent right after arrives, the manager still answers, the queue holds nothing.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import uuid
import zlib
from urllib.parse import unquote, urlsplit

import kombu
import pytest

import mqsync
from mqsync import embedded
from mqsync.chunk import encode_chunk
from mqsync.manager import Manager
from mqsync.names import check_url, redact_url
from tests._support import PeakRSS, RecordingSink, wait_until

T0 = 1_700_000_000_000_000_000
MB = 1024 * 1024


# -- raw peers ---------------------------------------------------------------------------


def publish_raw(url: str, body: bytes, exchange: str, routing_key: str, *,
                headers: dict | None = None, **properties) -> None:
    """Publish ``body`` exactly as given, with the headers and properties given."""
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        message = channel.prepare_message(body, None, "application/octet-stream", "binary",
                                          headers or {}, properties)
        channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
        channel.close()


def bomb(inflated: int = 512 * MB) -> bytes:
    """``inflated`` zero bytes, zlib-compressed (about a thousandth of the size)."""
    compressor = zlib.compressobj(9)
    block = bytes(MB)
    parts = [compressor.compress(block) for _ in range(inflated // MB)]
    return b"".join(parts) + compressor.flush()


@pytest.fixture(scope="module")
def zlib_bomb() -> bytes:
    return bomb()


def queue_counts(url: str, queue: str) -> tuple[int, int] | None:
    """``(ready, unacknowledged)`` of ``queue`` as rabbitmqctl reports them, or None."""
    vhost = unquote(urlsplit(url).path[1:]) or "/"
    result = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages_ready",
         "messages_unacknowledged", "--no-table-headers"],
        capture_output=True, text=True, timeout=60, check=True)
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == queue:
            return int(fields[1]), int(fields[2])
    return None


# -- data messages -------------------------------------------------------------------------


@pytest.fixture(params=["embedded", "broker"])
def network(request):
    """A network URL: the embedded one (held open for the test), or the broker's vhost."""
    if request.param == "embedded":
        with mqsync.Client(f"holder-{uuid.uuid4().hex[:6]}"):
            yield None, embedded.URL
    else:
        manager = request.getfixturevalue("manager")
        yield manager.url, manager.url


def test_compressed_data_messages_are_refused_not_inflated(network, unique, zlib_bomb):
    url, raw_url = network
    metric = f"test.{unique}.poison"
    with RecordingSink(f"sink-{unique}", url) as sink, PeakRSS() as rss:
        sink.subscribe([metric])
        headers = {"compression": "application/x-gzip"}
        # not compressed at all, though the header says so: kombu would raise in the loop
        publish_raw(raw_url, b"\x00not compressed", "metricq.data", metric, headers=headers)
        # 0.5 MB that inflate to 512 MiB
        for _ in range(3):
            publish_raw(raw_url, zlib_bomb, "metricq.data", metric, headers=headers)
        publish_raw(raw_url, encode_chunk([T0], [42.0]), "metricq.data", metric)
        assert wait_until(lambda: sink.count(metric) == 1, 5), sink.stats()
        stats = sink.stats()
        assert stats["refused_messages"] == 4
        assert stats["reconnects"] == 0
        assert sink.points == [(metric, T0, 42.0)]
        if url is not None:  # nothing left in the queue: refused means rejected, not requeued
            assert wait_until(lambda: queue_counts(url, sink.data_queue) == (0, 0), 10), \
                queue_counts(url, sink.data_queue)
    assert rss.growth < 200 * MB, f"the sink grew by {rss.growth / MB:.0f} MB"


def test_malformed_chunks_are_counted_and_dropped(network, unique):
    url, raw_url = network
    metric = f"test.{unique}.malformed"
    with RecordingSink(f"sink-{unique}", url) as sink:
        sink.subscribe([metric])
        for body in (b"\xff" * 64, b"\x0a\x05\x01", encode_chunk([T0], [1.0])[:-3]):
            publish_raw(raw_url, body, "metricq.data", metric)
        publish_raw(raw_url, encode_chunk([T0 + 1], [2.0]), "metricq.data", metric)
        assert wait_until(lambda: sink.count(metric) == 1, 5), sink.stats()
        assert sink.stats()["malformed_data_messages"] == 3
        assert sink.stats()["reconnects"] == 0


# -- RPC bodies -------------------------------------------------------------------------------


def test_compressed_and_nested_rpc_bodies_are_refused(unique, zlib_bomb, caplog):
    caplog.set_level(logging.WARNING, logger="mqsync")
    with mqsync.Client(f"client-{unique}") as client, PeakRSS() as rss:
        manager = embedded.manager()
        before = manager.stats()
        common = {"reply_to": client.rpc_queue, "correlation_id": "x", "app_id": "attacker"}
        publish_raw(embedded.URL, zlib_bomb, "metricq.management", "get_metrics",
                    headers={"compression": "application/x-gzip"}, **common)
        publish_raw(embedded.URL, b"[" * 200_000 + b"]" * 200_000, "metricq.management",
                    "get_metrics", **common)
        publish_raw(embedded.URL, b'{"function": "get_metrics", "x": ' + b"[" * 100_000
                    + b"]" * 100_000 + b"}", "metricq.management", "get_metrics", **common)
        assert client.get_metrics(timeout=5) is not None
        assert wait_until(lambda: manager.stats()["malformed_rpc_messages"]
                          == before.get("malformed_rpc_messages", 0) + 2, 5)
        assert manager.stats()["refused_messages"] == before["refused_messages"] + 1
        assert manager.stats()["reconnects"] == 0
    assert rss.growth < 200 * MB
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


BAD_REQUESTS = [
    ("sink.subscribe", {"metrics": ["m.x"], "dataQueue": 5}, "'dataQueue' must be a queue name"),
    ("sink.subscribe", {"metrics": "m.x"}, "'metrics' must be an array"),
    ("sink.subscribe", {"metrics": [""]}, "invalid metric name"),
    ("sink.subscribe", {"metrics": ["m.x"], "expires": -1}, "'expires' must be a positive"),
    ("sink.subscribe", {"metrics": ["m.x"], "expires": True}, "'expires' must be a positive"),
    ("sink.subscribe", {"metrics": ["m.x"], "durable": "yes"}, "'durable' must be true or"),
    ("sink.subscribe", {"metrics": ["m.x"], "metadata": 1}, "'metadata' must be true or"),
    ("sink.unsubscribe", {"metrics": ["m.x"]}, "'dataQueue' must be a queue name"),
    ("sink.release", {"dataQueue": ["q"]}, "'dataQueue' must be a queue name"),
    ("get_metrics", {"selector": 5}, "'selector' must be a regular expression"),
    ("get_metrics", {"selector": "("}, "invalid 'selector'"),
    ("get_metrics", {"selector": "(?=a)"}, "invalid 'selector'"),
    ("get_metrics", {"limit": -1}, "'limit' must be a non-negative integer"),
    ("get_metrics", {"historic": "no"}, "'historic' must be true or false"),
    ("get_metrics", {"format": "csv"}, "'format' must be"),
    ("get_metrics", {"prefix": 3}, "'prefix' must be a string"),
    ("source.declare_metrics", {"metrics": {"": {}}}, "invalid metric name"),
    ("source.declare_metrics", {"metrics": {"m.x": 3}}, "must be an object"),
    ("source.declare_metrics", {"metrics": 7}, "'metrics' must be an object"),
    ("source.declare_metrics", {"metrics": {"m.x": json.loads("[" * 40 + "]" * 40)}},
     "must be an object"),
    ("source.declare_metrics", {"metrics": {"m.x": {"a": json.loads("[" * 40 + "]" * 40)}}},
     "nests deeper"),
    ("db.subscribe", {"metrics": [{"input": "m.x"}]}, "neither a name nor"),
    ("db.subscribe", {"metrics": "m.x"}, "'metrics' must be an array"),
    ("sink.subscribe", {"metrics": ["m.x"], "unexpected": 1, "from_token": "forged"},
     "from_token"),
]


@pytest.mark.parametrize("function, arguments, message", BAD_REQUESTS,
                         ids=[f"{f}-{m[:20]}" for f, _, m in BAD_REQUESTS])
def test_bad_arguments_are_refused_with_a_clear_error(unique, caplog, function, arguments,
                                                      message):
    caplog.set_level(logging.WARNING, logger="mqsync")
    with mqsync.Client(f"client-{unique}") as client:
        metrics_before = client.get_metrics()
        with pytest.raises(mqsync.RPCError, match=message):
            client.rpc(function, timeout=5, **arguments)
        assert client.get_metrics() == metrics_before
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert not refused[0].exc_info
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_refused_request_leaves_the_manager_working(manager, unique):
    """An int dataQueue once broke every later metadata save of the manager."""
    with mqsync.Client(f"client-{unique}", manager.url) as client:
        with pytest.raises(mqsync.RPCError, match="dataQueue"):
            client.rpc("sink.subscribe", metrics=[f"test.{unique}.a"], dataQueue=5, timeout=10)
        client.rpc("source.declare_metrics", metrics={f"test.{unique}.a": {"unit": "V"}})
        assert client.get_metrics(selector=[f"test.{unique}.a"])[f"test.{unique}.a"]["unit"] \
            == "V"
    saved = json.loads(manager.metadata_file.read_text())["state"]
    assert saved["metrics"][f"test.{unique}.a"]["unit"] == "V"  # saved after the refusal
    assert all(isinstance(name, str) for name in saved["queues"])
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        sink.subscribe([f"test.{unique}.a"])


def test_a_catastrophic_selector_is_answered_at_once(manager, unique):
    name = f"test.{unique}." + "a" * 40 + "!"
    with mqsync.Client(f"client-{unique}", manager.url, rpc_timeout=10) as client:
        client.rpc("source.declare_metrics", metrics=[name])
        started = time.monotonic()
        assert client.get_metrics(selector="(a+)+$", metadata=False) is not None
        assert client.get_metrics(selector=r"\.(a+)+!$", metadata=False) == {name: {}} \
            or name in client.get_metrics(selector=r"\.(a+)+!$", metadata=False)
        # what took a Python regex engine beyond any timeout takes RE2 milliseconds
        assert time.monotonic() - started < 5
        with mqsync.Source(f"source-{unique}", manager.url, connect_timeout=10):
            pass


# -- ownership ------------------------------------------------------------------------------


def test_no_client_can_use_or_release_another_clients_queue(manager, unique):
    metric = f"test.{unique}.victim"
    with RecordingSink(f"victim-{unique}", manager.url) as victim, \
            mqsync.Source(f"source-{unique}", manager.url) as source, \
            mqsync.Client(f"attacker-{unique}", manager.url, rpc_timeout=10) as attacker:
        victim.subscribe([metric])
        queue = victim.data_queue
        for function, arguments in (
                ("sink.release", {"dataQueue": queue}),
                ("sink.unsubscribe", {"dataQueue": queue, "metrics": [metric]}),
                ("sink.subscribe", {"dataQueue": queue, "metrics": ["test.other"]}),
                ("sink.release", {"dataQueue": "management"}),
                ("sink.subscribe", {"dataQueue": "management", "metrics": [metric]}),
                ("sink.release", {"dataQueue": f"{victim.token}-rpc"}),
                ("sink.release", {"dataQueue": f"attacker-{unique}-rpc"})):
            with pytest.raises(mqsync.RPCError, match="may not use"):
                attacker.rpc(function, **arguments)
        source.send(metric, T0, 1.0)
        source.flush()
        assert wait_until(lambda: victim.count(metric) == 1, 10)
        assert attacker.get_metrics(selector=[metric]) is not None  # the manager answers


def test_a_subscribers_drain_may_release_its_queue(manager, unique):
    """The Drain runs under the Subscriber's token with a uuid (as in the official
    client): the manager lets it unsubscribe and release the Subscriber's queue."""
    metric = f"test.{unique}.drained"
    with mqsync.Subscriber(f"sub-{unique}", manager.url, metrics=[metric],
                           expires=60) as subscriber:
        with mqsync.Source(f"source-{unique}", manager.url) as source:
            source.send(metric, T0, 3.0)
            source.flush()
        time.sleep(0.5)
        assert [(m, t.posix_ns, v) for m, t, v in subscriber.collect_data(timeout=10)] == \
            [(metric, T0, 3.0)]
    assert queue_counts(manager.url, subscriber.queue) is None


# -- requests nobody waits for, and a manager that starts with a backlog ----------------------


@pytest.fixture
def private_vhost(broker_url):
    """A vhost of this test's own on the shared broker, for a manager it stops and starts."""
    parts = urlsplit(broker_url)
    vhost = f"mqsync-hostile-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost,
                    parts.username or "guest", ".*", ".*", ".*"], check=True, timeout=60)
    yield parts._replace(path="/" + vhost).geturl()
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], timeout=60)


def test_stale_requests_expire_and_waiting_ones_find_the_manager_ready(private_vhost, unique):
    url = private_vhost
    first = Manager(url, token=f"manager-{unique}")
    first.start()
    first.stop()  # the exchanges and the durable management queue stay
    with mqsync.Client(f"sink-{unique}", url, rpc_timeout=1) as client:
        with pytest.raises(mqsync.RPCTimeout):
            client.rpc("sink.subscribe", metrics=["test.stale"], timeout=1.0)
        # the broker drops the request once its caller gave up: it is never executed
        assert wait_until(lambda: queue_counts(url, "management") == (0, 0), 10), \
            queue_counts(url, "management")
        replies: list = []
        waiting = threading.Thread(target=lambda: replies.append(client.rpc(
            "sink.subscribe", metrics=["test.waiting"], timeout=30)))
        waiting.start()
        assert wait_until(lambda: queue_counts(url, "management") == (1, 0), 10)
        second = Manager(url, token=f"manager-{unique}")
        second.start()
        try:
            waiting.join(30)
            assert replies and replies[0]["dataQueue"].startswith(f"sink-{unique}-")
            vhost_queues = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "-p", urlsplit(url).path[1:], "name",
                 "--no-table-headers"], capture_output=True, text=True, check=True,
                timeout=60).stdout.split()
            assert [q for q in vhost_queues if q.endswith("-data")] == [replies[0]["dataQueue"]]
        finally:
            second.stop()


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["Pw#s3cr/et?x", "p@ss:w/rd", "a;b", "%zz", "s p"])
def test_passwords_are_masked_whatever_they_hold(password):
    url = f"amqp://guest:{password}@127.0.0.1:5999/"
    masked = redact_url(url)
    assert masked == "amqp://guest:******@127.0.0.1:5999/"
    if any(c in password for c in "#/?@"):
        with pytest.raises(mqsync.ConfigError) as caught:
            mqsync.Client("client-x", url)
        assert password not in str(caught.value)
        assert not any(piece in str(caught.value) for piece in password.split("#")[0:1]
                       if len(piece) > 1)


def test_masking_keeps_the_rest_of_the_url():
    assert redact_url("amqp://u:p@h1;amqps://v:q@h2:5671/x") == \
        "amqp://u:******@h1;amqps://v:******@h2:5671/x"
    assert redact_url("amqp://user@host/") == "amqp://user@host/"
    assert redact_url("memory://") == "memory://"
    assert check_url("amqp://u:%23%2F@h/") == "amqp://u:%23%2F@h/"
    with pytest.raises(mqsync.ConfigError, match="expected scheme://"):
        check_url("localhost:5672")


COMMANDS = [
    ["mqsync-manager"], ["mqsync-source", "--plugin", "dummy"], ["mqsync-sink", "m.x"],
    ["mqsync-measure", "--metrics", "m.x", "--", "true"], ["mqsync-db", "--database", "x.db"],
    ["mqsync-discover"], ["mqsync-inspect", "m.x"], ["mqsync-send", "m.x", "1"],
    ["mqsync-check"], ["mqsync-export", "--start", "-1h", "m.x"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_no_command_prints_any_piece_of_a_password(command, tmp_path):
    password = "Pw#s3cr/et?x"
    result = subprocess.run(
        [command[0], "--url", f"amqp://guest:{password}@127.0.0.1:5999/", *command[1:]],
        cwd=tmp_path,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "invalid broker URL 'amqp://guest:******@127.0.0.1:5999/'" in output, output
    for piece in ("Pw", "s3cr", "et?x"):
        assert piece not in output


def test_one_slow_request_holds_up_no_other(private_vhost, unique):
    """Handlers run on a pool: a request that takes long (a slow broker, a huge reply)
    leaves the manager free to answer everyone else."""
    entered = threading.Event()
    release = threading.Event()

    class SlowManager(Manager):
        @mqsync.rpc_handler("test.slow")
        def _slow(self, **_):
            entered.set()
            release.wait(20)

    with SlowManager(private_vhost, token=f"manager-{unique}"), \
            mqsync.Client(f"slow-{unique}", private_vhost) as slow, \
            mqsync.Client(f"other-{unique}", private_vhost) as other:
        waiting = threading.Thread(target=lambda: slow.rpc("test.slow", timeout=30))
        waiting.start()
        try:
            assert entered.wait(10)
            assert other.get_metrics(timeout=5) == {}  # answered while test.slow runs
            with mqsync.Source(f"source-{unique}", private_vhost, connect_timeout=5):
                pass
        finally:
            release.set()
            waiting.join(30)
