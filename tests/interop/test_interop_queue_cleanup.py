"""The official client's queue model through mqsync-manager: an official Sink's data queue
goes when the sink goes (auto-delete), as with the official manager, instead of lingering
until its ``x-expires`` (10 minutes by default)."""

from __future__ import annotations

import shutil
import time
from urllib.parse import unquote, urlsplit

import pytest

import mqsync
from tests._rabbit_node import RabbitNodeError, list_queues
from tests._support import wait_until
from tests.conftest import IN_CI
from tests.interop.official import start_peer

pytestmark = [pytest.mark.broker, pytest.mark.interop]

T0 = 1_700_000_000_000_000_000


def _vhost_queues(vhost: str) -> dict[str, dict]:
    try:
        return list_queues(vhost)
    except RabbitNodeError as error:
        message = f"cannot list the queues of vhost {vhost!r}: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: this test must run)", pytrace=False)
    pytest.skip(message)


def test_an_official_sink_leaves_no_data_queue_behind(manager, official_python, unique):
    if shutil.which("rabbitmqctl") is None:
        if IN_CI:
            pytest.fail("rabbitmqctl is missing (CI=true: this test must run)", pytrace=False)
        pytest.skip("rabbitmqctl is missing: cannot list the broker's queues")
    vhost = unquote(urlsplit(manager.url).path[1:]) or "/"
    metric = f"interop.{unique}.cleanup"
    count = 500
    with start_peer("official_sink.py", "--url", manager.url, "--metric", metric,
                    "--count", count, "--timeout", 60, "--quiet") as sink:
        queue = sink.wait_for("ready", timeout=60)["queue"]
        assert queue, sink.describe()
        declared = _vhost_queues(vhost).get(queue)
        assert declared is not None, f"{queue} not listed while its sink runs"
        # the official manager's model: transient and auto-delete
        assert (declared["durable"], declared["auto_delete"]) == (False, True), declared
        with mqsync.Source(f"source-{unique}", manager.url, chunk_size=50) as source:
            for i in range(count):
                source.send(metric, T0 + i, float(i))
            source.flush()
        assert sink.finish(timeout=90) == 0, sink.describe()
    exited = time.monotonic()
    assert wait_until(lambda: queue not in _vhost_queues(vhost), timeout=10, interval=0.5), \
        f"{queue} still exists 10 s after its official Sink exited: {_vhost_queues(vhost)}"
    print(f"official Sink's queue gone {time.monotonic() - exited:.1f} s after it exited")
