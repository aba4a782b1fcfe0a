"""An official metricq Source (or IntervalSource) that sends a known sequence of points.

Usage:
    official_source.py --url URL [--token T] --metric M [--metric M2 ...] --count N
        [--chunk-size K|none] [--start-ns NS] [--step-ns NS] [--values linear|special]
        [--metadata JSON] [--pace S] [--interval [--period S]] [--echo] [--timeout S]

Point ``i`` of the ``m``-th metric has the timestamp ``start_ns + i * step_ns`` (exact int ns)
and the value ``value_for(i, m, mode)`` from ``_common.py``. Points are sent metric by metric
interleaved (i = 0 for every metric, then i = 1, ...), then the source flushes and stops.

stdout, one JSON object per line:
    {"event": "connected", "token", "data_server_address"}   after source.register
    {"event": "config", "config": {...}}                       each config the source got
    {"event": "declared", "metrics": {name: metadata}}         after source.declare_metrics
    {"event": "point", "metric", "t", "v"}                     per point, only with --echo
    {"event": "sent", "sent": N, "metrics": [...]}             N points per metric, flushed
    {"event": "error", ...}                                    on failure (see _common.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import _common
import metricq
from metricq import IntervalSource, Source, Timedelta, Timestamp, rpc_handler


class _Recorder:
    """What both source kinds share: remembering the data server address they were given."""

    recorded_data_server_address: str | None = None

    async def data_config(self, dataServerAddress: str, **kwargs: Any) -> None:
        await super().data_config(dataServerAddress=dataServerAddress, **kwargs)  # type: ignore[misc]
        self.recorded_data_server_address = self.data_server_address  # type: ignore[attr-defined]


async def _on_config(self: Source, **config: Any) -> None:
    """The ``config`` RPC handler of both source kinds (metricq collects handlers per class,
    so it is attached to each class below rather than to the mixin)."""
    config.pop("from_token", None)
    _common.emit("config", config=config)
    if isinstance(self, IntervalSource) and self.period is None and "period" in config:
        # Real IntervalSources set their period from the config, as here.
        period = config["period"]
        if isinstance(period, str):
            self.period = Timedelta.from_string(period)
        else:
            self.period = float(period)


class PeerSource(_common.BoundedRpcMixin, _Recorder, Source):
    on_config = rpc_handler("config")(_on_config)

    async def task(self) -> None:
        # The points are sent from main(); the task only waits for the stop.
        assert self.task_stop_future is not None
        await self.task_stop_future


class PeerIntervalSource(_common.BoundedRpcMixin, _Recorder, IntervalSource):
    """Sends one point per metric on each update until ``count`` points per metric are out."""

    on_config = rpc_handler("config")(_on_config)

    def __init__(self, *args: Any, plan: Plan, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.next_index = 0
        loop = asyncio.get_running_loop()
        # Set by main() once the metrics are declared: no point goes out before that.
        self.go: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    async def update(self) -> None:
        await self.go
        if self.finished.done():
            return
        try:
            await self.plan.send_index(self, self.next_index)
            self.next_index += 1
            if self.next_index >= self.plan.count:
                await self.flush()
                self.finished.set_result(None)
        except BaseException as error:
            if not self.finished.done():
                self.finished.set_exception(error)
            raise


class Plan:
    def __init__(self, args: argparse.Namespace) -> None:
        self.metrics: list[str] = args.metric
        self.count: int = args.count
        self.start_ns: int = args.start_ns if args.start_ns is not None else time.time_ns()
        self.step_ns: int = args.step_ns
        self.values: str = args.values
        self.echo: bool = args.echo

    async def send_index(self, source: Source, index: int) -> None:
        timestamp_ns = self.start_ns + index * self.step_ns
        for metric_index, metric in enumerate(self.metrics):
            value = _common.value_for(index, metric_index, self.values)
            await source.send(metric, Timestamp(timestamp_ns), value)
            if self.echo:
                _common.emit("point", **_common.point_record(metric, timestamp_ns, value))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="official metricq Source sending a known sequence",
        epilog=_common.EXIT_CODES_HELP,
    )
    _common.add_common_arguments(parser, timeout_default=60.0)
    parser.add_argument("--token", default=None, help="client token (default: unique)")
    parser.add_argument("--metric", action="append", required=True, help="metric name (repeat)")
    parser.add_argument("--count", type=int, required=True, help="points per metric")
    parser.add_argument(
        "--chunk-size",
        default="1",
        help="Source.chunk_size: a positive int, or 'none' to send only on flush (default 1)",
    )
    parser.add_argument("--start-ns", type=int, default=None, help="first timestamp (default now)")
    parser.add_argument("--step-ns", type=int, default=1_000_000, help="time step (default 1 ms)")
    parser.add_argument("--values", choices=("linear", "special"), default="linear")
    parser.add_argument(
        "--metadata",
        default=None,
        help="JSON object merged into every metric's metadata (keys given here win)",
    )
    parser.add_argument(
        "--pace", type=float, default=0.0, help="seconds to sleep after each index (default 0)"
    )
    parser.add_argument(
        "--interval", action="store_true", help="use metricq.IntervalSource to send the points"
    )
    parser.add_argument(
        "--period",
        default=None,
        help="IntervalSource period in seconds; without it the config's 'period' is used",
    )
    parser.add_argument("--echo", action="store_true", help="print every point sent")
    args = parser.parse_args()
    if args.count < 0:
        parser.error("--count must be >= 0")
    if args.chunk_size.lower() == "none":
        args.chunk_size = None
    else:
        try:
            args.chunk_size = int(args.chunk_size)
        except ValueError:
            parser.error(f"--chunk-size must be a positive int or 'none', not {args.chunk_size!r}")
        if args.chunk_size < 1:
            parser.error(f"--chunk-size must be >= 1, not {args.chunk_size}")
    if args.metadata is not None:
        try:
            args.metadata = json.loads(args.metadata)
        except json.JSONDecodeError as error:
            parser.error(f"--metadata is not JSON: {error}")
        if not isinstance(args.metadata, dict):
            parser.error("--metadata must be a JSON object")
    return args


def metadata_for(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}
    for metric in args.metric:
        metadata: dict[str, Any] = {
            "description": f"mqsync interop metric {metric}",
            "unit": "W",
            "rate": 1e9 / args.step_ns if args.step_ns > 0 else 0.0,
            "quantity": "power",
        }
        metadata.update(args.metadata or {})
        declared[metric] = metadata
    return declared


async def main(args: argparse.Namespace) -> int:
    token = args.token or _common.default_token("source")
    plan = Plan(args)
    source: Source | None = None
    try:
        if args.interval:
            source = PeerIntervalSource(
                token,
                args.url,
                plan=plan,
                connection_timeout=_common.STOP_TIMEOUT_S,
                client_version=_common.CLIENT_VERSION,
            )
            if args.period is not None:
                source.period = float(args.period)
        else:
            source = PeerSource(
                token,
                args.url,
                connection_timeout=_common.STOP_TIMEOUT_S,
                client_version=_common.CLIENT_VERSION,
            )
        source.rpc_timeout = args.rpc_timeout
        source.chunk_size = args.chunk_size

        _common.set_stage("connect")
        await source.connect()
        _common.emit(
            "connected",
            token=source.token,
            data_server_address=_common.masked_url(source.recorded_data_server_address),
        )

        _common.set_stage("declare_metrics")
        declared = metadata_for(args)
        # declare_metrics adds chunkSize to the dicts it is given; print what went out.
        await source.declare_metrics(declared)
        _common.emit("declared", metrics=declared)

        _common.set_stage("send")
        if args.interval:
            assert isinstance(source, PeerIntervalSource)
            if source.period is None:
                raise _common.PeerSetupError(
                    "--interval needs --period or a 'period' in the config from source.register"
                )
            if plan.count == 0:
                source.finished.set_result(None)
            source.go.set_result(None)
            await asyncio.wait_for(source.finished, args.timeout)
        else:
            for index in range(plan.count):
                await plan.send_index(source, index)
                if args.pace > 0:
                    await asyncio.sleep(args.pace)
        _common.set_stage("flush")
        await source.flush()
        _common.emit("sent", sent=plan.count, metrics=plan.metrics)
        return _common.EXIT_OK
    finally:
        if isinstance(source, PeerIntervalSource) and not source.go.done():
            # Let an update() still waiting for the go return without sending, and give the
            # task a period so it waits for the stop instead of failing (an exception in the
            # task makes IntervalSource.stop() hang).
            if not source.finished.done():
                source.finished.cancel()
            if source.period is None:
                source.period = 1.0
            source.go.set_result(None)
        if source is not None and getattr(source, "_task", None) is not None:
            await _common.stop_quietly(source)
        elif source is not None:
            # Never connected far enough to start the task: Source.teardown would assert.
            await _common.stop_quietly(_PlainStop(source))


class _PlainStop:
    """Tear down a Source whose task never started (connect failed half-way)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def stop(self, silent: bool = True) -> None:
        await metricq.DataClient.teardown(self.source)


if __name__ == "__main__":
    arguments = parse_args()
    _common.run(lambda: main(arguments), arguments)
