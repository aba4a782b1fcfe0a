"""The manager's transformer RPCs, history.register's reply and get_metrics' refusals.

metricq-manager's answers are the reference (metricq_manager/manager.py): transformer.register
is source.register, transformer.declare_metrics is source.declare_metrics, and
transformer.subscribe binds the transformer's one durable data queue ``<token>-data``.  Each
test runs on the embedded network and on RabbitMQ.
"""

from __future__ import annotations

import json
import time
import uuid

import kombu
import pytest

import mqsync
from mqsync import embedded
from mqsync.chunk import decode_chunk
from mqsync.manager import MetadataStore

T0 = 1_700_000_000_000_000_000


@pytest.fixture(params=["embedded", pytest.param("broker", marks=pytest.mark.broker)])
def network(request):
    """``(url, set_config, manager)``: the embedded network (held open for the test) or the
    session's mqsync-manager on RabbitMQ (``manager`` is None there: it runs in a process)."""
    if request.param == "embedded":
        with mqsync.Client(f"holder-{uuid.uuid4().hex[:6]}"):
            manager = embedded.manager()
            yield embedded.URL, manager.configs.set, manager
    else:
        process = request.getfixturevalue("manager")
        yield process.url, process.set_config, None


def read_queue(
    url: str, queue: str, expected: int, timeout: float = 10.0, settle: float = 0.3
) -> list[tuple[str, int, float]]:
    """Take every message off ``queue`` until ``expected`` points came and ``settle`` seconds
    passed without another; the points as (routing key, ns, value)."""
    points: list[tuple[str, int, float]] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        while time.monotonic() < deadline:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                if len(points) >= expected and time.monotonic() - quiet_since > settle:
                    break
                time.sleep(0.02)
                continue
            quiet_since = time.monotonic()
            times, values = decode_chunk(message.body)
            metric = message.delivery_info["routing_key"]
            points.extend((metric, t, v) for t, v in zip(times, values))
        channel.close()
    return points


def delete_queue(url: str, queue: str) -> None:
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        channel.queue_delete(queue=queue)
        channel.close()


def send(url: str, token: str, points: list[tuple[str, int, float]]) -> None:
    with mqsync.Source(token, url) as source:
        for metric, t, v in points:
            source.send(metric, mqsync.Timestamp(t), v)
        source.flush()


# -- transformer.register and transformer.declare_metrics ------------------------------------


def test_transformer_register_answers_as_source_register(network, unique):
    url, set_config, _ = network
    token = f"transformer-{unique}"
    set_config(token, {"metrics": {f"test.{unique}.out": {"expression": "x"}}, "rate": 2})
    with mqsync.Client(token, url, rpc_timeout=10) as client:
        reply = client.rpc("transformer.register")
        assert reply == client.rpc("source.register")
    assert set(reply) == {"dataServerAddress", "dataExchange", "config"}
    assert reply["dataExchange"] == "metricq.data"
    assert reply["config"] == {"metrics": {f"test.{unique}.out": {"expression": "x"}}, "rate": 2}
    with mqsync.Client(f"transformer-{unique}-unconfigured", url, rpc_timeout=10) as client:
        assert client.rpc("transformer.register")["config"] == {}


def test_transformer_declare_metrics_keeps_metadata_as_a_source_does(network, unique):
    url, _, _ = network
    token = f"transformer-{unique}"
    out, listed = f"test.{unique}.out", f"test.{unique}.listed"
    with mqsync.Client(token, url, rpc_timeout=10) as client:
        assert (
            client.rpc(
                "transformer.declare_metrics",
                metrics={
                    out: {
                        "unit": "W",
                        "rate": 10,
                        "source": "forged",
                        "historic": True,
                        "_private": 1,
                        "chunkSize": 1,
                    }
                },
            )
            == {}
        )
        assert client.rpc("transformer.declare_metrics", metrics=[listed]) == {}
        declared = client.get_metrics(selector=[out, listed])
    assert declared[out]["source"] == token and declared[listed]["source"] == token
    assert {k: v for k, v in declared[out].items() if k != "date"} == {
        "unit": "W",
        "rate": 10,
        "chunkSize": 1,
        "source": token,
    }
    assert set(declared[listed]) == {"date", "source"}


# -- transformer.subscribe --------------------------------------------------------------------


def test_transformer_subscribe_binds_its_durable_queue_and_answers_as_sink_subscribe(
    network, unique
):
    url, _, _ = network
    token = f"transformer-{unique}"
    a, b = f"test.{unique}.a", f"test.{unique}.b"
    queue = f"{token}-data"
    try:
        with mqsync.Source(f"source-{unique}", url) as source:
            source.declare_metrics({a: {"unit": "V", "rate": 5}})
        with mqsync.Client(token, url, rpc_timeout=10) as client:
            reply = client.rpc("transformer.subscribe", metrics=[a, b])
            sink_reply = client.rpc("sink.subscribe", metrics=[a, b])
        assert set(reply) == set(sink_reply) == {"dataServerAddress", "dataQueue", "metrics"}
        assert reply["dataServerAddress"] == sink_reply["dataServerAddress"]
        assert reply["dataQueue"] == queue  # one fixed name per token, no uuid
        assert reply["metrics"] == sink_reply["metrics"]
        assert reply["metrics"][a]["unit"] == "V" and reply["metrics"][b] == {}
        delete_queue(url, sink_reply["dataQueue"])
        sent = [(a, T0, 1.5), (b, T0 + 1, -2.0), (f"test.{unique}.other", T0 + 2, 9.0)]
        send(url, f"source-{unique}", sent)
        assert sorted(read_queue(url, queue, 2)) == sent[:2]
    finally:
        delete_queue(url, queue)


@pytest.mark.broker
def test_the_transformers_queue_is_durable_and_never_expires(manager, unique):
    token = f"transformer-{unique}"
    queue = f"{token}-data"
    try:
        with mqsync.Client(token, manager.url, rpc_timeout=10) as client:
            client.rpc("transformer.subscribe", metrics=[f"test.{unique}.a"])
        with kombu.Connection(manager.url, connect_timeout=10) as connection:
            # the same declaration succeeds: durable, not auto-delete, no x-expires ...
            channel = connection.channel()
            channel.queue_declare(queue=queue, durable=True, auto_delete=False, arguments={})
            channel.close()
            # ... and any other is refused by RabbitMQ (406 PRECONDITION_FAILED)
            for durable, auto_delete, arguments in (
                (False, True, {}),
                (True, False, {"x-expires": 600000}),
            ):
                channel = connection.channel()
                with pytest.raises(Exception, match="PRECONDITION_FAILED|inequivalent"):
                    channel.queue_declare(
                        queue=queue, durable=durable, auto_delete=auto_delete, arguments=arguments
                    )
    finally:
        delete_queue(manager.url, queue)


def test_a_new_transformer_subscribe_replaces_the_bindings(network, unique):
    """As metricq-manager's cleanup_bindings: metrics of the previous subscribe that the
    transformer no longer asks for are unbound (the C++ transformer subscribes again on
    every configuration)."""
    url, _, _ = network
    token = f"transformer-{unique}"
    a, b, c = (f"test.{unique}.{name}" for name in "abc")
    queue = f"{token}-data"
    try:
        with mqsync.Client(token, url, rpc_timeout=10) as client:
            assert set(client.rpc("transformer.subscribe", metrics=[a, b])["metrics"]) == {a, b}
            assert set(client.rpc("transformer.subscribe", metrics=[b, c, c])["metrics"]) == {b, c}
        sent = [(a, T0, 1.0), (b, T0 + 1, 2.0), (c, T0 + 2, 3.0)]
        send(url, f"source-{unique}", sent)
        assert sorted(read_queue(url, queue, 2)) == sent[1:]
    finally:
        delete_queue(url, queue)


def test_the_transformer_owns_its_queue_and_nobody_else_does(network, unique):
    url, _, _ = network
    token = f"transformer-{unique}"
    a, b = f"test.{unique}.a", f"test.{unique}.b"
    queue = f"{token}-data"
    try:
        with (
            mqsync.Client(token, url, rpc_timeout=10) as transformer,
            mqsync.Client(f"attacker-{unique}", url, rpc_timeout=10) as attacker,
        ):
            transformer.rpc("transformer.subscribe", metrics=[a])
            for function, arguments in (
                ("sink.subscribe", {"dataQueue": queue, "metrics": [b]}),
                ("sink.unsubscribe", {"dataQueue": queue, "metrics": [a]}),
                ("sink.release", {"dataQueue": queue}),
            ):
                with pytest.raises(mqsync.RPCError, match="may not use data queue"):
                    attacker.rpc(function, **arguments)
            # the attacker's own transformer.subscribe makes its own queue
            assert (
                attacker.rpc("transformer.subscribe", metrics=[a])["dataQueue"]
                == f"attacker-{unique}-data"
            )
            delete_queue(url, f"attacker-{unique}-data")
            # the transformer uses the sink RPCs on it, with the same rules as a sink
            assert (
                transformer.rpc("sink.subscribe", dataQueue=queue, metrics=[b])["dataQueue"]
                == queue
            )
            send(url, f"source-{unique}", [(a, T0, 1.0), (b, T0 + 1, 2.0)])
            assert sorted(read_queue(url, queue, 2)) == [(a, T0, 1.0), (b, T0 + 1, 2.0)]
            transformer.rpc("sink.unsubscribe", dataQueue=queue, metrics=[a, b], end=False)
            send(url, f"source-{unique}", [(a, T0 + 2, 3.0)])
            assert read_queue(url, queue, 0, timeout=1.0) == []
            assert transformer.rpc("sink.release", dataQueue=queue) == {}
            if url != embedded.URL:  # memory:// answers any passive declare
                with pytest.raises(mqsync.RPCError, match="does not exist"):
                    transformer.rpc("sink.unsubscribe", dataQueue=queue, metrics=[a])
    finally:
        delete_queue(url, queue)


BAD_TRANSFORMER_REQUESTS = [
    ("transformer.subscribe", {}, "transformer.subscribe: 'metrics' must be an array"),
    ("transformer.subscribe", {"metrics": "m.x"}, "transformer.subscribe: 'metrics' must be"),
    ("transformer.subscribe", {"metrics": ["m.x", ""]}, "transformer.subscribe: .*invalid"),
    (
        "transformer.declare_metrics",
        {"metrics": {"m.x": 3}},
        "transformer.declare_metrics: metadata of 'm.x' must be an object",
    ),
    ("transformer.declare_metrics", {"metrics": 7}, "transformer.declare_metrics: 'metrics'"),
    ("transformer.declare_metrics", {}, "transformer.declare_metrics: 'metrics'"),
]


@pytest.mark.parametrize(
    "function, arguments, message",
    BAD_TRANSFORMER_REQUESTS,
    ids=[f"{f}-{m[-24:]}" for f, _, m in BAD_TRANSFORMER_REQUESTS],
)
def test_bad_transformer_requests_are_refused_and_change_nothing(
    unique, function, arguments, message
):
    with mqsync.Client(f"transformer-{unique}", rpc_timeout=10) as client:
        store = embedded.manager().metadata
        before = json.dumps(
            [
                store.items(),
                store.queue_arguments(f"transformer-{unique}-data"),
                store.transformer_bindings(f"transformer-{unique}"),
            ]
        )
        with pytest.raises(mqsync.RPCError, match=message):
            client.rpc(function, **arguments)
        assert (
            json.dumps(
                [
                    store.items(),
                    store.queue_arguments(f"transformer-{unique}-data"),
                    store.transformer_bindings(f"transformer-{unique}"),
                ]
            )
            == before
        )


def test_transformer_bindings_are_saved_with_the_metadata(tmp_path):
    path = tmp_path / "metadata.json"
    store = MetadataStore(path)
    store.set_transformer_bindings("transformer-x", ["m.a", "m.b"])
    assert MetadataStore(path).transformer_bindings("transformer-x") == ["m.a", "m.b"]
    assert MetadataStore(path).transformer_bindings("transformer-y") is None


# -- history.register -------------------------------------------------------------------------


def test_history_register_announces_the_history_server(network, unique):
    url, set_config, _ = network
    token = f"history-{unique}"
    set_config(token, {"answer": 42})
    with mqsync.Client(token, url, rpc_timeout=10) as client:
        reply = client.rpc("history.register")
    assert reply == {
        "historyServerAddress": reply["dataServerAddress"],
        "dataServerAddress": reply["dataServerAddress"],
        "historyExchange": "metricq.history",
        "historyQueue": f"{token}-hrsp",
        "config": {"answer": 42},
    }
    assert reply["historyServerAddress"]


# -- get_metrics ------------------------------------------------------------------------------


REFUSED_GET_METRICS = [
    ({"selector": "a", "prefix": "a"}, "'selector' cannot be combined with 'prefix' or 'infix'"),
    ({"selector": ["a.b"], "infix": "b"}, "'selector' cannot be combined"),
    ({"selector": "a", "prefix": "a", "infix": "b"}, "'selector' cannot be combined"),
    ({"prefix": "a", "infix": "b"}, "'prefix' and 'infix' cannot be combined"),
    ({"historic": "yes"}, "'historic' must be true or false, got a string"),
    ({"historic": 1}, "'historic' must be true or false, got a number"),
    ({"hidden": "no"}, "'hidden' must be true or false"),
    ({"selector": []}, "'selector' must not be an empty array"),
]


@pytest.mark.parametrize(
    "arguments, message", REFUSED_GET_METRICS, ids=[json.dumps(a) for a, _ in REFUSED_GET_METRICS]
)
def test_get_metrics_refuses_what_metricq_manager_refuses(network, unique, arguments, message):
    url, _, _ = network
    with mqsync.Client(f"client-{unique}", url, rpc_timeout=10) as client:
        client.rpc("source.declare_metrics", metrics=["a.b"])
        with pytest.raises(mqsync.RPCError, match=f"get_metrics: {message}"):
            client.rpc("get_metrics", format="array", **arguments)


def test_get_metrics_keeps_its_documented_extensions(network, unique):
    """infix without historic and hidden with any filter (metricq-manager: "not yet
    supported"), selector with historic and limit (metricq-manager too)."""
    url, _, _ = network
    base = f"test.{unique}"
    shown, hidden, other = f"{base}.cpu.power", f"{base}.gpu.power", f"{base}.cpu.temp"
    with mqsync.Client(f"client-{unique}", url, rpc_timeout=10) as client:
        client.rpc(
            "source.declare_metrics", metrics={shown: {}, hidden: {"hidden": True}, other: {}}
        )

        def names(**arguments) -> list[str]:
            return client.rpc("get_metrics", format="array", **arguments)["metrics"]

        # sorted by name: cpu.power, cpu.temp, gpu.power
        assert names(infix=f"{unique}.cpu.") == [shown, other]
        assert names(infix=f"{unique}.", hidden=True) == [hidden]
        assert names(prefix=base, hidden=False) == [shown, other]
        assert names(selector=[shown, hidden], historic=False) == [shown, hidden]
        assert names(selector=rf"^test\.{unique}\..*\.power$", limit=1) == [shown]
        assert names(prefix=base, limit=2) == [shown, other]
        assert names(prefix=base) == [shown, other, hidden]
