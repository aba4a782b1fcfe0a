"""Subscriber/Drain interop with the official metricq 5.4.0 client, through mqsync-manager.

Both directions buffer while the collecting side is disconnected, then drain; every point
is compared exactly (int-ns timestamps, the bits of every float via ``float.hex``).
"""

from __future__ import annotations

import math

import pytest

import mqsync
from tests.interop.official import run_peer, start_peer
from tests.test_subscription_broker import wait_for_queue_depth

pytestmark = [pytest.mark.broker, pytest.mark.interop]

T0 = 1_700_000_000_000_000_000
SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, -5e-324, 1.7976931348623157e308,
            2.2250738585072014e-308, 0.0, 1 / 3, -2.5]


def _hex(value: float) -> str:
    # The official client's pure-Python protobuf decodes every NaN as the canonical NaN.
    return "nan" if math.isnan(value) else float.hex(value)


@pytest.mark.parametrize("chunk_size", [1, 250])
def test_official_drain_collects_an_mqsync_stream(manager, official_python, unique, chunk_size):
    metrics = [f"interop.{unique}.drain-a", f"interop.{unique}.drain-b"]
    count = 1000
    sent = {metric: [(T0 + i * 1_000_003 + m, SPECIALS[i % len(SPECIALS)] if i % 4 == 0
                      else i * 0.125 - m) for i in range(count)]
            for m, metric in enumerate(metrics)}
    with start_peer("official_drain.py", "--url", manager.url, *_metric_args(metrics),
                    "--expires", 120, "--timeout", 60) as drain:
        subscribed = drain.wait_for("subscribed", timeout=60)
        assert set(subscribed["metadata"]) == set(metrics)
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=chunk_size) as source:
            source.declare_metrics({metric: {"unit": "W"} for metric in metrics})
            for i in range(count):
                for metric in metrics:
                    t, v = sent[metric][i]
                    source.send(metric, mqsync.Timestamp(t), v)
            source.flush()
        messages = -(-count // chunk_size) * len(metrics)
        wait_for_queue_depth(manager.url, subscribed["queue"], messages)
        drain.send_line("go")
        assert drain.finish(timeout=120) == 0, drain.describe()
    points = [r for r in drain.records if r.get("event") == "point"]
    for metric in metrics:
        got = [(p["t"], p["v"]) for p in points if p["metric"] == metric]
        assert got == [(t, _hex(v)) for t, v in sent[metric]]
    summary = [r for r in drain.records if r.get("event") == "summary"][-1]
    assert summary["complete"] is True
    assert summary["received"] == {metric: count for metric in metrics}


@pytest.mark.parametrize("chunk_size", ["1", "none"])
def test_mqsync_drain_collects_an_official_source(manager, official_python, unique,
                                                  chunk_size):
    metrics = [f"interop.{unique}.from-official-a", f"interop.{unique}.from-official-b"]
    count = 500
    with mqsync.Subscriber(f"sink-drain-{unique}", manager.url, metrics=metrics,
                           expires=120) as subscriber:
        assert not subscriber.running
        result = run_peer("official_source.py", "--url", manager.url, *_metric_args(metrics),
                          "--count", count, "--chunk-size", chunk_size, "--start-ns", T0,
                          "--step-ns", 999_999, "--values", "special", "--echo",
                          "--token", f"source-official-{unique}", timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        messages = (count if chunk_size == "1" else 1) * len(metrics)
        wait_for_queue_depth(manager.url, subscriber.queue, messages)
        collected = [(m, t.posix_ns, v) for m, t, v in subscriber.collect_data(timeout=30)]
    sent = [r for r in result.records if r.get("event") == "point"]
    assert len(sent) == count * len(metrics)
    for metric in metrics:
        got = [(t, _hex(v)) for m, t, v in collected if m == metric]
        assert got == [(r["t"], r["v"]) for r in sent if r["metric"] == metric]


def _metric_args(metrics: list[str]) -> list[str]:
    return [arg for metric in metrics for arg in ("--metric", metric)]
