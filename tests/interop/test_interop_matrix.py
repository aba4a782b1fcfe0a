"""The rest of the interop matrix: official clients among themselves through
mqsync-manager, metadata, discover in both directions and RPCs to mqsync handlers."""

from __future__ import annotations

import json

import pytest

import mqsync
from tests.interop.official import run_peer, start_peer

pytestmark = [pytest.mark.broker, pytest.mark.interop]

T0 = 1_700_000_000_000_000_000


def test_official_source_to_official_sink_through_mqsync_manager(manager, official_python,
                                                                  unique):
    metric = f"interop.{unique}.official-only"
    count = 300
    with start_peer("official_sink.py", "--url", manager.url, "--metric", metric,
                    "--count", count, "--timeout", 60) as sink:
        sink.wait_for("ready", timeout=60)
        source = run_peer("official_source.py", "--url", manager.url, "--metric", metric,
                          "--count", count, "--chunk-size", "7", "--start-ns", T0,
                          "--values", "special", "--echo", timeout=120)
        assert source.returncode == 0, source.stderr[-3000:]
        assert sink.finish(timeout=90) == 0, sink.describe()
    sent = [(r["t"], r["v"]) for r in source.records if r.get("event") == "point"]
    received = [(r["t"], r["v"]) for r in sink.records if r.get("event") == "point"]
    assert received == sent and len(sent) == count


def test_official_get_metrics_sees_mqsync_metadata(manager, official_python, unique):
    metric = f"interop.{unique}.meta"
    with mqsync.Source(f"source-{unique}", manager.url, chunk_size=10) as source:
        source.declare_metrics({metric: {"unit": "W", "rate": 20.0, "description": "power",
                                         "quantity": "power"}})
        result = run_peer("official_rpc.py", "--url", manager.url, "--get-metrics",
                          "--selector", f"^interop\\.{unique}\\.", timeout=60)
        names = run_peer("official_rpc.py", "--url", manager.url, "--get-metrics",
                         "--selector-names", metric, "--no-metadata", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = [r for r in result.records if r.get("event") == "result"][0]["metrics"]
    assert metrics[metric]["unit"] == "W" and metrics[metric]["rate"] == 20.0
    assert metrics[metric]["chunkSize"] == 10
    assert metrics[metric]["source"] == f"source-{unique}"
    assert names.returncode == 0, names.stderr[-2000:]
    assert metric in [r for r in names.records if r.get("event") == "result"][0]["metrics"]


def test_official_discover_finds_mqsync_clients(manager, official_python, unique):
    with mqsync.Client(f"client-{unique}", manager.url, client_version="9.9"):
        result = run_peer("official_rpc.py", "--url", manager.url, "--discover", "--wait", 2,
                          timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    replies = {r["from"]: r["response"] for r in result.records
               if r.get("event") == "discover_response"}
    answer = replies[f"client-{unique}"]
    assert answer["alive"] is True and answer["metricqVersion"].startswith("mqsync/")
    assert answer["version"] == "9.9"


def test_mqsync_discover_finds_official_clients(manager, official_python, unique):
    token = f"official-{unique}"
    with start_peer("official_rpc.py", "--url", manager.url, "--serve", "--token", token,
                    "--timeout", 60) as server:
        server.wait_for("ready", timeout=60)
        with mqsync.Client(f"client-{unique}", manager.url) as client:
            answers = client.discover(timeout=1.5)
            echo = client.rpc_direct(token, "echo", value=[1, 2.5, "x"])
            with pytest.raises(mqsync.RPCError, match="boom"):
                client.rpc_direct(token, "fail", message="boom")
        server.finish(timeout=30)
    assert answers[token]["metricqVersion"].startswith("metricq-python/")
    assert echo["echo"] == {"value": [1, 2.5, "x"]}


class Echo(mqsync.Client):
    @mqsync.rpc_handler("echo")
    def echo(self, from_token, **arguments):
        return {"echo": arguments, "seen_from": from_token}

    @mqsync.rpc_handler("fail")
    def fail(self, **_):
        raise ValueError("refused on purpose")


def test_official_rpc_reaches_an_mqsync_handler(manager, official_python, unique):
    with Echo(f"echo-{unique}", manager.url) as server:
        ok = run_peer("official_rpc.py", "--url", manager.url, "--call", server.token, "echo",
                      json.dumps({"n": 3, "s": "ü"}), timeout=60)
        failing = run_peer("official_rpc.py", "--url", manager.url, "--call", server.token,
                           "fail", "{}", timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
    response = [r for r in ok.records if r.get("event") == "result"][0]["response"]
    assert response["echo"] == {"n": 3, "s": "ü"}
    assert response["from_token"] == server.token
    assert failing.returncode == 5  # the peer's code for an error reply
    assert "refused on purpose" in failing.stdout + failing.stderr
