"""Client life cycle and RPCs, on the embedded (memory://) network."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import mqsync
from mqsync.names import derive_address
from tests._support import wait_until


class Echo(mqsync.Client):
    @mqsync.rpc_handler("echo")
    def echo(self, from_token, **arguments):
        return {"echo": arguments, "from": from_token}

    @mqsync.rpc_handler("fail")
    def fail(self, **_):
        raise ValueError("deliberate failure")

    @mqsync.rpc_handler("slow")
    def slow(self, **_):
        threading.Event().wait(0.5)
        return {}

    @mqsync.rpc_handler("bad-reply")
    def bad_reply(self, **_):
        return {"function": "nope"}


def test_start_stop_leaves_no_thread_and_stop_is_idempotent(unique):
    client = mqsync.Client(f"client-{unique}")
    client.start()
    assert client.running
    client.stop()
    client.stop()
    assert not client.running
    with pytest.raises(RuntimeError, match="cannot be started again"):
        client.start()


def test_direct_rpc_replies_and_errors_reach_the_caller(unique):
    with Echo(f"echo-{unique}") as server, mqsync.Client(f"caller-{unique}") as caller:
        reply = caller.rpc_direct(server.token, "echo", value=[1, 2], name="x")
        assert reply == {"echo": {"value": [1, 2], "name": "x"}, "from": caller.token}
        with pytest.raises(mqsync.RPCError, match="deliberate failure"):
            caller.rpc_direct(server.token, "fail")
        with pytest.raises(mqsync.RPCError, match="unknown RPC function 'missing'"):
            caller.rpc_direct(server.token, "missing")
        with pytest.raises(mqsync.RPCError, match="'function' key"):
            caller.rpc_direct(server.token, "bad-reply")
        with pytest.raises(mqsync.RPCTimeout, match="no reply to RPC 'slow' within 0.1 s"):
            caller.rpc_direct(server.token, "slow", timeout=0.1)
        # the server is still alive after all that
        assert caller.rpc_direct(server.token, "echo")["from"] == caller.token
        assert server.stats()["rpc_errors_answered"] == 3


def test_rpc_to_nobody_times_out_in_the_caller(unique):
    with mqsync.Client(f"caller-{unique}") as caller, pytest.raises(mqsync.RPCTimeout):
        caller.rpc_direct(f"nobody-{unique}", "echo", timeout=0.2)


def test_rpc_arguments_must_be_json(unique):
    with mqsync.Client(f"caller-{unique}") as caller:
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            caller.rpc("get_metrics", selector=object())
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            caller.rpc("get_metrics", limit=float("nan"))


def test_calls_on_a_stopped_client_raise():
    client = mqsync.Client("never-started")
    with pytest.raises(mqsync.ClientStopped, match="not running"):
        client.rpc("get_metrics")


def test_discover_lists_every_client(unique):
    with Echo(f"echo-{unique}") as server, mqsync.Client(f"caller-{unique}") as caller:
        answers = caller.discover(timeout=0.3)
        assert server.token in answers and caller.token in answers
        answer = answers[server.token]
        assert answer["alive"] is True
        assert answer["metricqVersion"].startswith("mqsync/")
        assert mqsync.Timestamp.from_iso8601(answer["currentTime"])
        assert answer["uptime"] > 0


def test_non_json_and_unknown_messages_are_dropped_and_counted(unique):
    with Echo(f"echo-{unique}") as server, mqsync.Client(f"caller-{unique}") as caller:
        management = caller._management
        management.publish(b"\x00not json", "", server.rpc_queue, app_id="rogue",
                           reply_to=caller.rpc_queue).result(5)
        management.publish(b'{"function": "echo"}', "", server.rpc_queue,
                           app_id="rogue").result(5)  # no reply_to
        management.publish(b'{"result": 1}', "", server.rpc_queue, app_id="rogue",
                           correlation_id="unknown").result(5)
        assert caller.rpc_direct(server.token, "echo")["from"] == caller.token
        stats = server.stats()
        assert stats["malformed_rpc_messages"] == 2
        assert stats["unmatched_replies"] == 1


def test_invalid_tokens_are_refused():
    for token in ("", "has space", None):
        with pytest.raises(ValueError, match="invalid token"):
            mqsync.Client(token)


def test_repr_and_url_hide_the_password():
    client = mqsync.Client("c", "amqp://user:s3cret@host:5672/vh")
    assert "s3cret" not in repr(client) and "s3cret" not in client.url
    assert "******" in client.url


def test_derive_address():
    management = "amqp://user:pw@host:5672/main"
    assert derive_address(management, "vhost:data") == "amqp://user:pw@host:5672/data"
    assert derive_address(management, "vhost:/") == "amqp://user:pw@host:5672/"
    assert derive_address(management, "amqps://other:5671/x") == "amqps://user:pw@other:5671/x"
    assert derive_address("memory://", "memory://") == "memory://"
    assert derive_address("memory://", "vhost:/") == "memory://"
    assert derive_address(management, "vhost:/x") == "amqp://user:pw@host:5672/%2Fx"


def test_run_returns_after_stop_from_another_thread(unique):
    client = mqsync.Client(f"runner-{unique}")
    stopper = threading.Timer(0.3, client.stop)
    stopper.start()
    client.run()
    stopper.join()
    assert not client.running


def test_wait_ends_on_a_signal_and_stops_the_client(unique):
    before = signal.getsignal(signal.SIGINT)
    with mqsync.Client(f"waiter-{unique}") as client:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        assert client.wait(timeout=30) is True  # no KeyboardInterrupt
        timer.join()
        assert not client.running
    assert signal.getsignal(signal.SIGINT) is before
    with mqsync.Client(f"waiter-{unique}") as client:
        assert client.wait(timeout=0.2) is False
        assert client.running


README_PRINTER = """
import sys
import mqsync

url = sys.argv[1]

class Printer(mqsync.Sink):
    def on_data(self, metric, timestamp, value):
        print(timestamp, metric, value, flush=True)

with Printer("sink-printer", url) as sink:
    sink.subscribe(["room.temperature"])
    print("subscribed", flush=True)
    sink.wait()
"""


def test_the_readme_printer_ends_quietly_on_ctrl_c(manager, tmp_path):
    script = tmp_path / "printer.py"
    script.write_text(README_PRINTER)
    process = subprocess.Popen([sys.executable, str(script), manager.url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "subscribed\n"
        with mqsync.Source(f"room-{os.getpid()}", manager.url) as source:
            source.send("room.temperature", mqsync.Timestamp(10**18), 21.5)
            source.flush()
        assert "room.temperature 21.5" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_every_client_reports_its_counters_in_one_shape(unique, tmp_path):
    """stats() is a dict of int counters on every client; roles add theirs to the base's."""
    from mqsync.db import Db

    class Ticking(mqsync.IntervalSource):
        def update(self):
            self.send(f"tick.{unique}", mqsync.Timestamp.now(), 1.0)

    class Quiet(mqsync.Sink):
        def on_data(self, metric, timestamp, value):
            pass

    base = {"lost_points", "reconnects", "refused_messages", "rpc_handler_errors",
            "unmatched_replies"}
    extra = {
        mqsync.Client: set(),
        mqsync.Source: {"sent_points", "sent_chunks"},
        Ticking: {"sent_points", "sent_chunks", "updates", "update_failures",
                  "consecutive_update_failures", "missed_slots", "overruns"},
        Quiet: set(),
        mqsync.HistoryClient: {"unmatched_history_responses"},
        Db: set(),
    }
    for kind, keys in extra.items():
        kwargs = {"period": 0.01} if kind is Ticking else {}
        if kind is Db:
            kwargs = {"database": tmp_path / "stats.db"}
        with kind(f"{kind.__name__.lower()}-{unique}", **kwargs) as client:
            if kind is Ticking:
                assert wait_until(lambda c=client: c.stats()["updates"] >= 2)
            stats = client.stats()
            assert isinstance(stats, dict)
            assert all(isinstance(k, str) and type(v) is int for k, v in stats.items()), stats
            assert base | keys <= stats.keys(), (kind, base | keys - stats.keys())
    # the schedule's figures are the same in both views
    with Ticking(f"ticking-{unique}", period=0.01) as source:
        assert wait_until(lambda: source.stats()["updates"] >= 3)
        source.period = None
        time.sleep(0.05)
        assert source.stats()["updates"] == source.schedule_stats().updates
