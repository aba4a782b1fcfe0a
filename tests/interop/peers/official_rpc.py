"""A plain official metricq Client for RPC interop: get_metrics, discover, direct calls, serving.

Usage (exactly one mode):
    official_rpc.py --url URL --get-metrics [--selector REGEX | --selector-names N [N ...]]
        [--no-metadata] [--historic true|false] [--prefix P] [--infix I] [--limit N]
        [--hidden true|false]
    official_rpc.py --url URL --discover [--wait S]
    official_rpc.py --url URL --call TOKEN FUNCTION JSON
    official_rpc.py --url URL --management FUNCTION JSON
    official_rpc.py --url URL --serve [--token T] [--timeout S]

--get-metrics   ``Client.get_metrics(...)``, the manager's ``get_metrics``.
--discover      ``discover`` to the ``metricq.broadcast`` exchange (routing key "discover") with
                a response callback and ``cleanup_on_response=False``, as metricq-discover does;
                collects replies for --wait seconds. The client's own queue is bound to the
                broadcast exchange too, so it answers itself ("self": true).
--call          a direct RPC: ``Agent.rpc`` to the default exchange with routing key
                ``<TOKEN>-rpc``; JSON (an object) is the arguments. Its keys must not be
                ``exchange``, ``routing_key``, ``response_callback``, ``timeout`` or
                ``cleanup_on_response`` (they are Agent.rpc's parameters).
--management    ``Client.rpc(FUNCTION, **JSON)``: any request to ``metricq.management``.
--serve         stay connected and answer RPCs until stdin closes or --timeout passes:
                ``discover`` (built in), ``echo`` (returns {"echo": arguments}),
                ``fail`` (raises, so the reply is {"error": message or "requested failure"}),
                ``slow`` (sleeps ``seconds``, then returns {"slept": seconds}), ``config``.

stdout, one JSON object per line:
    {"event": "connected", "token"}
    {"event": "result", "function", "response" | "metrics"}          get-metrics, call, management
    {"event": "discover_response", "from", "self": bool, "response"}  discover, per reply
    {"event": "summary", "responses": n, "tokens": [...]}             discover
    {"event": "ready", "token"}                                       serve, consuming
    {"event": "request", "function", "from", "arguments"}             serve, per request handled
    {"event": "stopped", "reason": "stdin closed" | "timeout"}        serve
    {"event": "error", ...}                                           on failure (see _common.py)
A "response" includes the "from_token" key metricq adds (the replier's app_id).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import _common
from metricq import Agent, Client, rpc_handler


class PeerClient(_common.BoundedRpcMixin, Client):
    @rpc_handler("echo")
    async def on_echo(self, from_token: str | None = None, **arguments: Any) -> dict[str, Any]:
        _common.emit("request", function="echo", arguments=arguments, **{"from": from_token})
        return {"echo": arguments}

    @rpc_handler("fail")
    async def on_fail(self, from_token: str | None = None, **arguments: Any) -> None:
        _common.emit("request", function="fail", arguments=arguments, **{"from": from_token})
        raise RuntimeError(str(arguments.get("message", "requested failure")))

    @rpc_handler("slow")
    async def on_slow(
        self, from_token: str | None = None, seconds: float = 1.0, **arguments: Any
    ) -> dict[str, Any]:
        _common.emit(
            "request",
            function="slow",
            arguments={"seconds": seconds, **arguments},
            **{"from": from_token},
        )
        await asyncio.sleep(float(seconds))
        return {"slept": seconds}

    @rpc_handler("config")
    async def on_config(self, from_token: str | None = None, **config: Any) -> None:
        _common.emit("request", function="config", arguments=config, **{"from": from_token})


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, not {text!r}")
    return value


def json_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="official metricq Client for RPC interop", epilog=_common.EXIT_CODES_HELP
    )
    _common.add_common_arguments(parser, timeout_default=30.0)
    parser.add_argument("--token", default=None, help="client token (default: unique)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--get-metrics", action="store_true")
    mode.add_argument("--discover", action="store_true")
    mode.add_argument("--call", nargs=3, metavar=("TOKEN", "FUNCTION", "JSON"))
    mode.add_argument("--management", nargs=2, metavar=("FUNCTION", "JSON"))
    mode.add_argument("--serve", action="store_true")

    selector = parser.add_mutually_exclusive_group()
    selector.add_argument("--selector", default=None, help="get_metrics selector regex")
    selector.add_argument(
        "--selector-names", nargs="+", default=None, help="get_metrics selector as a list"
    )
    parser.add_argument("--no-metadata", action="store_true", help="get_metrics metadata=False")
    parser.add_argument("--historic", type=json_bool, default=None)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--infix", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--hidden", type=json_bool, default=None)
    parser.add_argument(
        "--wait", type=float, default=2.0, help="discover: seconds to collect replies"
    )
    args = parser.parse_args()
    try:
        if args.call is not None:
            args.call[2] = json_object(args.call[2])
        if args.management is not None:
            args.management[1] = json_object(args.management[1])
    except argparse.ArgumentTypeError as error:
        parser.error(f"JSON argument {error}")
    return args


async def get_metrics(client: PeerClient, args: argparse.Namespace) -> int:
    _common.set_stage("get_metrics")
    selector: Any = args.selector if args.selector is not None else args.selector_names
    metrics = await client.get_metrics(
        selector=selector,
        metadata=not args.no_metadata,
        historic=args.historic,
        prefix=args.prefix,
        infix=args.infix,
        limit=args.limit,
        hidden=args.hidden,
        timeout=args.rpc_timeout,
    )
    _common.emit("result", function="get_metrics", metrics=metrics)
    return _common.EXIT_OK


async def discover(client: PeerClient, args: argparse.Namespace) -> int:
    _common.set_stage("discover")
    tokens: list[str] = []

    def on_response(from_token: str | None = None, **response: Any) -> None:
        tokens.append(str(from_token))
        _common.emit(
            "discover_response",
            response=response,
            self=from_token == client.token,
            **{"from": from_token},
        )

    await Agent.rpc(
        client,
        exchange=client._management_broadcast_exchange,
        routing_key="discover",
        function="discover",
        response_callback=on_response,
        cleanup_on_response=False,
        timeout=args.wait,
    )
    await asyncio.sleep(args.wait)
    _common.emit("summary", responses=len(tokens), tokens=tokens)
    return _common.EXIT_OK


async def call(client: PeerClient, args: argparse.Namespace) -> int:
    token, function, arguments = args.call
    _common.set_stage(f"call {function}")
    assert client._management_channel is not None
    response = await Agent.rpc(
        client,
        exchange=client._management_channel.default_exchange,
        routing_key=f"{token}-rpc",
        function=function,
        timeout=args.rpc_timeout,
        **arguments,
    )
    _common.emit("result", function=function, response=response)
    return _common.EXIT_OK


async def management(client: PeerClient, args: argparse.Namespace) -> int:
    function, arguments = args.management
    _common.set_stage(f"management {function}")
    response = await client.rpc(function, **arguments)
    _common.emit("result", function=function, response=response)
    return _common.EXIT_OK


async def serve(client: PeerClient, args: argparse.Namespace) -> int:
    _common.set_stage("serve")
    _common.emit("ready", token=client.token)
    stdin = _common.StdinLines()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    reason = "timeout"
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if await stdin.readline(remaining) is None:
                reason = "stdin closed"
                break
    except asyncio.TimeoutError:
        pass
    _common.emit("stopped", reason=reason)
    return _common.EXIT_OK


async def main(args: argparse.Namespace) -> int:
    token = args.token or _common.default_token("client")
    client = PeerClient(
        token,
        args.url,
        connection_timeout=_common.STOP_TIMEOUT_S,
        client_version=_common.CLIENT_VERSION,
    )
    client.rpc_timeout = args.rpc_timeout
    try:
        _common.set_stage("connect")
        await client.connect()
        _common.emit("connected", token=client.token)
        if args.get_metrics:
            return await get_metrics(client, args)
        if args.discover:
            return await discover(client, args)
        if args.call is not None:
            return await call(client, args)
        if args.management is not None:
            return await management(client, args)
        return await serve(client, args)
    finally:
        await _common.stop_quietly(client)


if __name__ == "__main__":
    arguments = parse_args()
    _common.run(lambda: main(arguments), arguments)
