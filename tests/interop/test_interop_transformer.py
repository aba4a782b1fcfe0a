"""The transformer RPCs from the official metricq 5.4.0 client, against mqsync-manager.

metricq 5.4.0 has no Transformer class, so ``peers/official_transformer.py`` does what
metricq-cpp's ``metricq::Transformer`` does, on the official client's Sink machinery:
``transformer.register``, ``transformer.subscribe`` (its reply goes straight into the
official ``sink_config``: data connection, passive declare of ``dataQueue``, consume),
``transformer.declare_metrics``, then every input point is published, times a factor, as
an output point.  Points are compared exactly (int ns, the bits of every float).
"""

from __future__ import annotations

import math

import kombu
import pytest

import mqsync
from tests._support import RecordingSink, wait_until
from tests.interop.official import run_peer, start_peer

pytestmark = [pytest.mark.broker, pytest.mark.interop]

T0 = 1_700_000_000_000_000_000
FACTOR = 2.0


def _hex(value: float) -> str:
    return "nan" if math.isnan(value) else float.hex(value)


def _times_factor(records: list[dict]) -> list[tuple[int, str]]:
    """What the transformer must make of point records: (t, hex of v * FACTOR)."""
    return [(r["t"], _hex(float.fromhex(r["v"]) * FACTOR)) for r in records]


def _events(records: list[dict], event: str) -> list[dict]:
    return [r for r in records if r.get("event") == event]


def _without_from_token(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "from_token"}


def _delete_queue(url: str, queue: str) -> None:
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        channel.queue_delete(queue=queue)
        channel.close()


def test_official_source_to_official_transformer_to_official_sink(manager, official_python, unique):
    """Every client official, mqsync-manager in the middle: the transformer's registration,
    subscription and declaration are answered, data from a source reaches its queue, and
    what it declares and publishes reaches a sink."""
    token = f"transformer-official-{unique}"
    source_token = f"source-official-{unique}"
    metric_in, metric_out = f"interop.{unique}.in", f"interop.{unique}.doubled"
    count = 60
    manager.set_config(token, {"factor": FACTOR, "metrics": {metric_out: {"input": metric_in}}})
    with mqsync.Client(f"declarer-{unique}", manager.url) as declarer:
        declarer.rpc("source.declare_metrics", metrics={metric_in: {"unit": "V", "rate": 10}})
    try:
        with (
            start_peer(
                "official_sink.py",
                "--url",
                manager.url,
                "--metric",
                metric_out,
                "--count",
                count,
                "--timeout",
                60,
            ) as sink,
            start_peer(
                "official_transformer.py",
                "--url",
                manager.url,
                "--token",
                token,
                "--input",
                metric_in,
                "--output",
                metric_out,
                "--count",
                count,
                "--factor",
                FACTOR,
                "--unit",
                "V",
                "--timeout",
                60,
            ) as transformer,
        ):
            sink.wait_for("ready", timeout=60)
            ready = transformer.wait_for("ready", timeout=60)
            assert ready["queue"] == f"{token}-data"

            registered = _without_from_token(
                _events(transformer.records, "registered")[0]["response"]
            )
            assert set(registered) == {"dataServerAddress", "dataExchange", "config"}
            assert registered["dataExchange"] == "metricq.data"
            assert registered["config"] == {
                "factor": FACTOR,
                "metrics": {metric_out: {"input": metric_in}},
            }
            subscribed = _without_from_token(
                _events(transformer.records, "subscribed")[0]["response"]
            )
            assert set(subscribed) == {"dataServerAddress", "dataQueue", "metrics"}
            assert subscribed["dataQueue"] == f"{token}-data"
            assert subscribed["dataServerAddress"] == registered["dataServerAddress"]
            assert list(subscribed["metrics"]) == [metric_in]
            assert subscribed["metrics"][metric_in]["unit"] == "V"
            assert subscribed["metrics"][metric_in]["source"] == f"declarer-{unique}"
            assert (
                _without_from_token(_events(transformer.records, "declared")[0]["response"]) == {}
            )

            result = run_peer(
                "official_source.py",
                "--url",
                manager.url,
                "--metric",
                metric_in,
                "--count",
                count,
                "--chunk-size",
                7,
                "--start-ns",
                T0,
                "--step-ns",
                1_000_003,
                "--values",
                "special",
                "--echo",
                "--token",
                source_token,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            sent = _events(result.records, "point")
            assert len(sent) == count

            assert transformer.finish(timeout=90) == 0, transformer.describe()
            assert sink.finish(timeout=90) == 0, sink.describe()
        # The official Sink runs the callbacks of several messages at once (each awaits its
        # publish), so points of different messages may come out in another order: compare
        # sorted by time (every timestamp is distinct).
        inputs = _events(transformer.records, "input")
        assert sorted((r["metric"], r["t"], r["v"]) for r in inputs) == [
            (metric_in, r["t"], r["v"]) for r in sent
        ]
        expected = _times_factor(sent)
        assert sorted((r["t"], r["v"]) for r in _events(transformer.records, "output")) == expected
        assert sorted((r["t"], r["v"]) for r in _events(sink.records, "point")) == expected
        with mqsync.Client(f"check-{unique}", manager.url) as check:
            declared = check.get_metrics(selector=[metric_in, metric_out])
        assert declared[metric_out]["source"] == token
        assert declared[metric_out]["unit"] == "V"
        assert declared[metric_out]["chunkSize"] == 1
        assert declared[metric_in]["source"] == source_token
    finally:
        _delete_queue(manager.url, f"{token}-data")


def test_the_official_transformers_queue_keeps_data_while_it_is_down(
    manager, official_python, unique
):
    """The queue transformer.subscribe declares is durable and fixed per token: points an
    mqsync Source sends while the transformer is stopped wait for it, and its next
    transformer.subscribe re-declares the same queue without a conflict."""
    token = f"transformer-official-{unique}"
    metric_in, metric_out = f"interop.{unique}.in", f"interop.{unique}.out"
    common = (
        "--url",
        manager.url,
        "--token",
        token,
        "--input",
        metric_in,
        "--output",
        metric_out,
        "--factor",
        FACTOR,
        "--timeout",
        60,
    )
    count = 25
    values = [(T0 + i * 999_999, (-1.0) ** i * i / 3) for i in range(count)]
    try:
        first = run_peer("official_transformer.py", *common, "--count", 0, timeout=120)
        assert first.returncode == 0, first.stderr[-3000:]
        assert _events(first.records, "ready")[0]["queue"] == f"{token}-data"
        with RecordingSink(f"sink-{unique}", manager.url) as sink:
            sink.subscribe([metric_out])
            with mqsync.Source(f"source-{unique}", manager.url, chunk_size=4) as source:
                source.declare_metrics({metric_in: {"unit": "A"}})
                for t, v in values:
                    source.send(metric_in, mqsync.Timestamp(t), v)
                source.flush()
            second = run_peer("official_transformer.py", *common, "--count", count, timeout=120)
            assert second.returncode == 0, second.stderr[-3000:]
            assert _events(second.records, "ready")[0]["queue"] == f"{token}-data"
            subscribed = _events(second.records, "subscribed")[0]["response"]
            assert subscribed["metrics"][metric_in]["unit"] == "A"
            assert sorted((r["t"], r["v"]) for r in _events(second.records, "input")) == [
                (t, _hex(v)) for t, v in values
            ]
            assert wait_until(lambda: sink.count(metric_out) == count, 30), sink.points
        assert sorted(sink.points) == [(metric_out, t, v * FACTOR) for t, v in values]
    finally:
        _delete_queue(manager.url, f"{token}-data")
