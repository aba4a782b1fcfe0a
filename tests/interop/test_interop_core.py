"""Wire compatibility with the official metricq 5.4.0 client, through mqsync-manager.

The official client runs in a virtualenv of its own (see official.py); every point is
compared exactly: int-ns timestamps and the bits of every float (NaN, ±inf, -0.0,
subnormals included).
"""

from __future__ import annotations

import math

import pytest

import mqsync
from tests._support import RecordingSink, wait_until
from tests.interop.official import run_peer, start_peer

pytestmark = [pytest.mark.broker, pytest.mark.interop]

T0 = 1_700_000_000_000_000_000
SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, -5e-324, 1.7976931348623157e308,
            2.2250738585072014e-308, 0.0, 1 / 3, -2.5]


def _hex(value: float) -> str:
    return "nan" if math.isnan(value) else float.hex(value)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_official_sink_receives_an_mqsync_source(manager, official_python, unique, chunk_size):
    metric = f"interop.{unique}.to-official"
    count = 2000
    values = [SPECIALS[i % len(SPECIALS)] if i % 3 == 0 else i * 0.25 for i in range(count)]
    times = [T0 + i * 1_000_003 for i in range(count)]
    with start_peer("official_sink.py", "--url", manager.url, "--metric", metric,
                    "--count", count, "--timeout", 60) as sink:
        sink.wait_for("ready", timeout=60)
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=chunk_size) as source:
            source.declare_metrics({metric: {"unit": "", "rate": 1000}})
            for t, v in zip(times, values):
                source.send(metric, mqsync.Timestamp(t), v)
            source.flush()
        assert sink.finish(timeout=90) == 0, sink.describe()
    points = [r for r in sink.records if r.get("event") == "point"]
    assert [p["t"] for p in points] == times
    assert [p["v"] for p in points] == [_hex(v) for v in values]
    summary = [r for r in sink.records if r.get("event") == "summary"][-1]
    assert summary["complete"] is True


@pytest.mark.parametrize("chunk_size", ["1", "5", "none"])
def test_mqsync_sink_receives_an_official_source(manager, official_python, unique, chunk_size):
    metric = f"interop.{unique}.from-official"
    count = 500
    with RecordingSink(f"sink-{unique}", manager.url) as sink:
        reply = sink.subscribe([metric])
        assert reply["metrics"] == {metric: {}}
        result = run_peer("official_source.py", "--url", manager.url, "--metric", metric,
                          "--count", count, "--chunk-size", chunk_size, "--start-ns", T0,
                          "--step-ns", 999_999, "--values", "special", "--echo",
                          "--token", f"source-official-{unique}", timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        sent = [r for r in result.records if r.get("event") == "point"]
        assert len(sent) == count
        assert wait_until(lambda: sink.count() == count, timeout=30)
    assert [t for _, t, _ in sink.points] == [r["t"] for r in sent]
    assert [_hex(v) for _, _, v in sink.points] == [r["v"] for r in sent]
    metadata = mqsync.Client(f"check-{unique}", manager.url)
    with metadata:
        declared = metadata.get_metrics(selector=[metric])[metric]
    assert declared["source"] == f"source-official-{unique}"
