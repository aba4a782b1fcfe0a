"""``queue_type="quorum"``: which queues the manager declares as quorum queues, checked on
the broker (a single node takes quorum queues too; the cluster is tests/test_cluster.py).

Each test runs a network of its own (a fresh virtual host): a network's management queue
has one type.
"""

from __future__ import annotations

import uuid

import kombu
import pytest

import mqsync
from mqsync.db import Db
from mqsync.manager import Manager, MetadataStore
from mqsync.manager.manager import MANAGEMENT_QUEUE
from tests._rabbit_node import list_queues
from tests._support import RecordingSink, wait_until
from tests.conftest import vhost_of

pytestmark = [pytest.mark.broker]

T0 = 1_700_000_000_000_000_000


def _types(url: str) -> dict[str, tuple[str, bool, bool]]:
    """``{queue: (type, durable, auto_delete)}`` of the network's vhost."""
    return {name: (row["type"], row["durable"], row["auto_delete"])
            for name, row in list_queues(vhost_of(url), columns=["type"]).items()}


@pytest.mark.timeout(90)
def test_a_quorum_network_declares_its_queues_as_quorum_queues(vhost_url, tmp_path):
    u = uuid.uuid4().hex[:8]
    metric = f"quorum.{u}.m"
    with Manager(vhost_url, queue_type="quorum"):
        with RecordingSink(f"durable-{u}", vhost_url) as durable, \
                RecordingSink(f"transient-{u}", vhost_url, durable=False) as transient, \
                mqsync.Subscriber(f"sub-{u}", vhost_url, metrics=[metric], expires=60) \
                as subscriber, \
                Db(f"db-{u}", vhost_url, database=tmp_path / "db.sqlite",
                          metrics=[metric]) as db:
            durable.subscribe([metric])
            transient.subscribe([metric])
            types = _types(vhost_url)
            for queue in (durable.data_queue, transient.data_queue, subscriber.queue,
                          db.data_queue, db.history_queue, MANAGEMENT_QUEUE):
                assert types[queue] == ("quorum", True, False), (queue, types[queue])
            # the client's own inboxes and the history response queue stay classic
            assert types[f"{durable.token}-rpc"][0] == "classic"
            with mqsync.Source(f"source-{u}", vhost_url) as source:
                source.send_many(metric, list(range(T0, T0 + 300)), [1.0] * 300)
                source.flush(timeout=30)
            assert wait_until(lambda: durable.distinct(metric) == 300
                              and transient.distinct(metric) == 300, timeout=30)
            collected = list(subscriber.collect_data(timeout=30))
            assert len(collected) == 300
        # a stopped sink's queue is released, quorum or not
        assert wait_until(lambda: durable.data_queue not in _types(vhost_url), timeout=10)


@pytest.mark.timeout(60)
def test_an_existing_classic_database_queue_keeps_its_type(vhost_url, tmp_path):
    """A database registered on a classic network, then on a quorum one: its queues (with
    the data they hold) are kept as they are, not refused with 406."""
    u = uuid.uuid4().hex[:8]
    token = f"db-{u}"
    with Manager(vhost_url), \
            Db(token, vhost_url, database=tmp_path / "db.sqlite", metrics=[f"q.{u}"]):
        pass
    assert _types(vhost_url)[f"{token}-data"][0] == "classic"
    with kombu.Connection(vhost_url) as connection:  # the network switches its type
        channel = connection.channel()
        channel.queue_delete(MANAGEMENT_QUEUE)
        channel.close()
    with Manager(vhost_url, queue_type="quorum"), \
            Db(token, vhost_url, database=tmp_path / "db.sqlite", metrics=[f"q.{u}"]):
        types = _types(vhost_url)
        assert types[f"{token}-data"][0] == "classic"
        assert types[MANAGEMENT_QUEUE][0] == "quorum"


@pytest.mark.timeout(60)
def test_an_existing_classic_transformer_queue_keeps_its_type(vhost_url):
    """A transformer's fixed queue made before the network had quorum queues (and unknown
    to this manager) is bound as it is, not refused with 406."""
    u = uuid.uuid4().hex[:8]
    token = f"transformer-{u}"
    with Manager(vhost_url, queue_type="quorum"):
        with kombu.Connection(vhost_url) as connection:
            channel = connection.channel()
            channel.queue_declare(queue=f"{token}-data", durable=True, exclusive=False,
                                  auto_delete=False)
            channel.close()
        with mqsync.Client(token, vhost_url) as transformer:
            reply = transformer.rpc("transformer.subscribe", metrics=[f"t.{u}"])
        assert reply["dataQueue"] == f"{token}-data"
        assert _types(vhost_url)[f"{token}-data"][0] == "classic"
        with mqsync.Source(f"source-{u}", vhost_url) as source:
            source.send_many(f"t.{u}", [T0, T0 + 1], [1.0, 2.0])
            source.flush(timeout=30)
        assert wait_until(lambda: list_queues(vhost_of(vhost_url))[f"{token}-data"]
                          ["messages_ready"] == 1, timeout=30)


@pytest.mark.timeout(60)
def test_a_queue_type_change_is_refused_with_advice(vhost_url):
    with Manager(vhost_url):
        pass
    with pytest.raises(mqsync.ConnectFailed, match="rabbitmqctl delete_queue management"), \
            Manager(vhost_url, queue_type="quorum"):
        pass


def test_the_metadata_store_shares_every_change_in_order(tmp_path):
    shared: list[dict] = []
    store = MetadataStore(tmp_path / "m.json", on_change=shared.append)
    store.declare("src", {"a": {"unit": "W"}})
    store.set_queue_arguments("q", {"durable": True})
    store.mark_historic(["a"])
    assert [sorted(state["metrics"]) for state in shared] == [["a"], ["a"], ["a"]]
    assert shared[-1]["metrics"]["a"]["historic"] is True
    assert shared[1]["queues"] == {"q": {"durable": True}}

    other = MetadataStore(tmp_path / "other.json", on_change=shared.append)
    other.replace(store.dump())
    assert len(shared) == 3, "a state taken over is not shared again"
    assert other.get("a") == store.get("a")
    assert MetadataStore(tmp_path / "other.json").queue_arguments("q") == {"durable": True}


def test_a_failing_share_keeps_the_change_and_says_so(tmp_path, caplog):
    def broken(state: dict) -> None:
        raise ConnectionError("broker gone")

    store = MetadataStore(tmp_path / "m.json", on_change=broken)
    store.declare("src", {"a": {}})
    assert store.get("a") is not None
    assert "sharing the change failed: broker gone" in caplog.text
