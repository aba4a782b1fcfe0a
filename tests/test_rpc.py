"""rpc_handler, dispatch and reply matching (no broker)."""

from __future__ import annotations

import pytest

from mqsync.errors import InvalidMessage, RPCError
from mqsync.rpc import (
    PendingCalls,
    RPCDispatcher,
    UnknownFunction,
    decode_json,
    encode_json,
    rpc_handler,
)


class Base(RPCDispatcher):
    def __init__(self):
        self.calls = []

    @rpc_handler("config")
    def base_config(self, **config):
        self.calls.append(("base", config))

    @rpc_handler("ping", "pong")
    def ping(self, **_):
        return {"pong": True}


class Child(Base):
    @rpc_handler("config")
    def child_config(self, rate=1, **config):
        self.calls.append(("child", rate))


def test_handlers_of_bases_run_first():
    child = Child()
    assert child.rpc_dispatch("config", rate=5, from_token="x") is None
    assert child.calls == [("base", {"rate": 5, "from_token": "x"}), ("child", 5)]


def test_one_handler_for_several_functions():
    assert Child().rpc_dispatch("pong") == {"pong": True}
    assert sorted(Child().rpc_functions()) == ["config", "ping", "pong"]


def test_unknown_function_is_a_clear_error():
    with pytest.raises(UnknownFunction, match="unknown RPC function 'nope'"):
        Child().rpc_dispatch("nope")


def test_two_handlers_returning_values_is_an_error():
    class Twice(Base):
        @rpc_handler("ping")
        def ping_again(self, **_):
            return {"again": True}

    with pytest.raises(RPCError, match="more than one handler"):
        Twice().rpc_dispatch("ping")


def test_coroutine_handlers_are_refused_at_definition():
    with pytest.raises(TypeError, match="plain 'def'"):
        class Async(RPCDispatcher):
            @rpc_handler("config")
            async def on_config(self, **config):
                pass


def test_rpc_handler_needs_names():
    with pytest.raises(TypeError, match="needs one or more"):
        rpc_handler()


def test_json_round_trip_and_bad_bodies():
    assert decode_json(encode_json({"a": [1, 2.5, "x"]})) == {"a": [1, 2.5, "x"]}
    with pytest.raises(InvalidMessage, match="not JSON"):
        decode_json(b"{nope")
    with pytest.raises(InvalidMessage, match="JSON object"):
        decode_json(b"[1, 2]")
    with pytest.raises(InvalidMessage, match="not JSON"):
        decode_json(b"\xff\xfe")
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})


def test_pending_calls_match_by_correlation_id():
    pending = PendingCalls("tok")
    first, second = pending.new_id(), pending.new_id()
    assert first != second and first.startswith("mqsync-rpc-tok-")
    f1 = pending.expect_one(first, "f")
    f2 = pending.expect_one(second, "g")
    assert pending.resolve(second, "peer", {"error": "boom"})
    assert pending.resolve(first, "peer", {"ok": 1})
    assert f1.result(0) == {"ok": 1}
    with pytest.raises(RPCError, match="g failed at peer: boom"):
        f2.result(0)
    assert not pending.resolve(first, "peer", {"late": True})
    assert pending.unmatched == 1


def test_pending_calls_fail_all():
    pending = PendingCalls("tok")
    future = pending.expect_one(pending.new_id(), "f")
    pending.fail_all(RuntimeError("stopped"))
    with pytest.raises(RuntimeError, match="stopped"):
        future.result(0)
