"""A transformer built from the official metricq client, speaking the transformer RPCs.

metricq 5.4.0 has no Transformer class; metricq-cpp's ``metricq::Transformer`` (a Sink that
also publishes) is what sends these RPCs, and this peer does what it does, in its order, with
the official client's Sink machinery (``rpc``, ``data_config``, ``sink_config``):

1. ``transformer.register``: needs ``dataExchange`` and ``config`` in the reply;
2. ``transformer.subscribe(metrics=<inputs>)``: the reply is handed to ``sink_config`` (data
   connection from ``dataServerAddress``, passive declare of ``dataQueue``, consume);
3. ``transformer.declare_metrics(metrics={<output>: metadata})``;
4. every input point (t, v) is published as the output point (t, v * factor), one point per
   data message to ``dataExchange`` with the output metric as routing key, as the C++
   ``Transformer::send(id, TimeValue)`` does.

Usage:
    official_transformer.py --url URL --token T --input M [--input M2 ...] --output O
        --count N [--factor F] [--unit U] [--timeout S]

It exits 0 once N input points arrived (at once for N = 0), 4 when --timeout seconds after
"ready" passed first; the summary line comes last either way.

stdout, one JSON object per line:
    {"event": "registered", "response": {...}}         the transformer.register reply
    {"event": "config", "config": {...}}               its config
    {"event": "subscribed", "response": {...}}         the transformer.subscribe reply
    {"event": "declared", "response": {...}}           the transformer.declare_metrics reply
    {"event": "ready", "token", "queue", "data_server_address"}
    {"event": "input", "metric", "t", "v"}             per input point
    {"event": "output", "metric", "t", "v"}            per output point, after its publish
    {"event": "summary", "inputs": n, "outputs": n, "complete": bool}
    {"event": "error", ...}                            on failure (see _common.py)
A "response" includes the "from_token" key metricq adds (the replier's app_id).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import _common
import aio_pika
from metricq import Sink, Timestamp, rpc_handler
from metricq.datachunk_pb2 import DataChunk

ACK_GRACE_S = 0.5


class PeerTransformer(_common.BoundedRpcMixin, Sink):
    def __init__(self, *args: Any, args_: argparse.Namespace, **kwargs: Any) -> None:
        # a transformer has one token of its own (its data queue is named after it)
        super().__init__(*args, add_uuid=False, **kwargs)
        self.inputs: list[str] = list(args_.input)
        self.output: str = args_.output
        self.factor: float = args_.factor
        self.unit: str = args_.unit
        self.expected = args_.count
        self.inputs_seen = 0
        self.outputs_sent = 0
        self.complete = asyncio.Event()
        if self.expected == 0:
            self.complete.set()

    @rpc_handler("config")
    async def on_config(self, **config: Any) -> None:
        config.pop("from_token", None)
        _common.emit("config", config=config)

    async def connect(self) -> None:
        await super().connect()

        _common.set_stage("transformer.register")
        registered = await self.rpc("transformer.register")
        assert registered is not None
        _common.emit("registered", response=registered)
        exchange_name = registered["dataExchange"]
        _common.emit("config", config=registered["config"])

        _common.set_stage("transformer.subscribe")
        subscribed = await self.rpc("transformer.subscribe", metrics=self.inputs)
        assert subscribed is not None
        _common.emit("subscribed", response=subscribed)
        # the output exchange before any input can arrive
        await self.data_config(**subscribed)
        assert self.data_channel is not None
        self.data_exchange = await self.data_channel.declare_exchange(
            name=exchange_name, passive=True
        )
        await self.sink_config(**subscribed)

        _common.set_stage("transformer.declare_metrics")
        declared = await self.rpc(
            "transformer.declare_metrics",
            metrics={
                self.output: {
                    "unit": self.unit,
                    "description": f"{self.factor} times {', '.join(self.inputs)}",
                    "chunkSize": 1,
                }
            },
        )
        _common.emit("declared", response=declared)

    async def on_data(self, metric: str, timestamp: Timestamp, value: float) -> None:
        self.inputs_seen += 1
        _common.emit("input", **_common.point_record(metric, timestamp.posix_ns, value))
        result = value * self.factor
        chunk = DataChunk()
        chunk.time_delta.append(timestamp.posix_ns)
        chunk.value.append(result)
        assert self.data_exchange is not None
        await self.data_exchange.publish(
            aio_pika.Message(chunk.SerializeToString()), routing_key=self.output
        )
        self.outputs_sent += 1
        _common.emit("output", **_common.point_record(self.output, timestamp.posix_ns, result))
        if self.inputs_seen >= self.expected:
            self.complete.set()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="a metricq-cpp-like transformer on the official metricq client",
        epilog=_common.EXIT_CODES_HELP,
    )
    _common.add_common_arguments(parser, timeout_default=30.0)
    parser.add_argument("--token", required=True, help="the transformer's token")
    parser.add_argument("--input", action="append", required=True, help="input metric (repeat)")
    parser.add_argument("--output", required=True, help="output metric")
    parser.add_argument("--count", type=int, required=True, help="input points to wait for")
    parser.add_argument("--factor", type=float, default=2.0, help="output = input * factor")
    parser.add_argument("--unit", default="", help="the output metric's declared unit")
    args = parser.parse_args()
    if args.count < 0:
        parser.error("--count must be >= 0")
    return args


async def main(args: argparse.Namespace) -> int:
    transformer: PeerTransformer | None = None
    try:
        transformer = PeerTransformer(
            args.token,
            args.url,
            args_=args,
            connection_timeout=_common.STOP_TIMEOUT_S,
            client_version=_common.CLIENT_VERSION,
        )
        transformer.rpc_timeout = args.rpc_timeout
        _common.set_stage("connect")
        await transformer.connect()
        assert transformer._data_queue is not None
        _common.emit(
            "ready",
            token=transformer.token,
            queue=transformer._data_queue.name,
            data_server_address=_common.masked_url(transformer.data_server_address),
        )

        _common.set_stage("transform")
        code = _common.EXIT_OK
        try:
            await asyncio.wait_for(transformer.complete.wait(), args.timeout)
        except asyncio.TimeoutError:
            code = _common.EXIT_TIMEOUT
        # the last input is acked once on_data returned: let that go out before stopping,
        # or the message goes back to the durable queue
        await asyncio.sleep(ACK_GRACE_S)
        _common.emit(
            "summary",
            inputs=transformer.inputs_seen,
            outputs=transformer.outputs_sent,
            complete=code == _common.EXIT_OK,
        )
        return code
    finally:
        await _common.stop_quietly(transformer)


if __name__ == "__main__":
    arguments = parse_args()
    _common.run(lambda: main(arguments), arguments)
