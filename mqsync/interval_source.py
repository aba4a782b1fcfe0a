"""IntervalSource: a Source whose ``update()`` runs on a drift-free schedule."""

from __future__ import annotations

import logging
from typing import Any

from .names import BrokerURL
from .scheduler import Clock, Scheduler, SchedulerStats, TooManyFailures
from .source import Source
from .timeseries import DurationLike, Timedelta

logger = logging.getLogger(__name__)


class IntervalSource(Source):
    """A Source that calls :meth:`update` every :attr:`period`.

    Updates run on a fixed grid ``t0 + k·period`` of the monotonic clock, on the source's
    task thread, so neither the time an update takes nor sleep jitter accumulate.  A slot
    missed because an update overran (or the machine stalled) is skipped and counted,
    never caught up in a burst.  An update that raises is logged and counted and the
    schedule goes on; after ``max_consecutive_failures`` failures in a row the source
    stops with :class:`~mqsync.scheduler.TooManyFailures`.

    Args:
        period: a duration as :meth:`~mqsync.Timedelta.coerce` takes it: a ``Timedelta``,
            a ``datetime.timedelta``, a string with a unit (``"10s"``) or a number of
            seconds (``period=5`` is five seconds); ``None`` waits until one is set
            (typically from the ``config`` RPC handler).
        align: put the grid on wall-clock multiples of the period (plus ``offset``), so
            many hosts sample at the same instants.
        offset: shift of the aligned grid, a duration as ``period`` (may be negative).
        max_consecutive_failures: give up after this many failed updates in a row.
        clock: the scheduler's clock (tests inject a fake one).
        schedule: run updates on the schedule; ``False`` leaves calling :meth:`update`
            to the owner (``mqsync-source --once``).

    Example::

        class Dummy(mqsync.IntervalSource):
            @mqsync.rpc_handler("config")
            def on_config(self, rate: float = 1.0, **config):
                self.period = 1 / rate
                self.declare_metrics({"example.dummy": {"rate": rate, "unit": ""}})

            def update(self):
                self.send("example.dummy", mqsync.Timestamp.now(), random.random())
    """

    def __init__(self, token: str, url: BrokerURL | None = None, period: DurationLike | None = None,
                 *, align: bool = False, offset: DurationLike = 0,
                 max_consecutive_failures: int | None = None, clock: Clock | None = None,
                 schedule: bool = True, **kwargs: Any):
        super().__init__(token, url, **kwargs)
        self._schedule = schedule
        self._scheduler = Scheduler(
            period, align=align, offset=offset,
            max_consecutive_failures=max_consecutive_failures, clock=clock, name=self.token)

    @property
    def period(self) -> Timedelta | None:
        """Time between updates; set it any time, from any thread, to any duration the
        constructor takes (``None`` pauses)."""
        period_ns = self._scheduler.period_ns
        return None if period_ns is None else Timedelta(period_ns)

    @period.setter
    def period(self, value: DurationLike | None) -> None:
        self._scheduler.period = value

    def update(self) -> None:
        """Override: measure and :meth:`send`; called once per period.

        It holds :attr:`~mqsync.Client.callback_lock` while it runs (unless the source was
        made with ``serialize_callbacks=False``): no RPC handler, ``config`` included, runs
        at the same time."""
        raise NotImplementedError(f"{type(self).__name__} must override update()")

    def stats(self) -> dict[str, int]:
        """Counters of :meth:`Source.stats <mqsync.Source.stats>`, plus the schedule's:
        ``updates`` (begun), ``update_failures``, ``consecutive_update_failures`` (the current
        streak), ``missed_slots``, ``overruns`` (events that skipped slots) and, once an update
        ran, ``last_lateness_ns``."""
        counters = super().stats()
        schedule = self._scheduler.stats()
        counters.update(
            updates=schedule.updates,
            update_failures=schedule.failures,
            consecutive_update_failures=schedule.consecutive_failures,
            missed_slots=schedule.missed_slots,
            overruns=schedule.overruns,
        )
        if schedule.last_lateness_ns is not None:
            counters["last_lateness_ns"] = schedule.last_lateness_ns
        return counters

    def schedule_stats(self) -> SchedulerStats:
        """The schedule's counters as one object (the same figures are in :meth:`stats`)."""
        return self._scheduler.stats()

    def task(self) -> None:
        if not self._schedule:
            return
        try:
            self._scheduler.run(self._serialized_update)
        except TooManyFailures as error:
            logger.error("%s: stopping: %s", self.token, error)
            self._on_fatal(error)

    def _serialized_update(self) -> None:
        with self._callbacks_serialized():
            self.update()

    def _on_stop(self, timeout: float) -> None:
        self._scheduler.stop()
        super()._on_stop(timeout)

