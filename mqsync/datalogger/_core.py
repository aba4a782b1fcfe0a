"""The DataLogger: log values, measure durations, record events, hand batches to writers.

:class:`DataLogger` collects :class:`DataEntry` and :class:`Event` records from any number of
threads. :meth:`DataLogger.write_data` hands what was collected, as one batch, to every
:class:`DatabaseWriter`; a writer that fails keeps its batch for the next write.
:class:`BlockMeasurer` is the context manager of :meth:`DataLogger.measure_block`.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Callable, Sequence, TypeVar, overload

from ..errors import InvalidMeasurement, WriteFailed
from ._arguments import (
    TagValues,
    call_arguments,
    either_tag_map,
    event_tag_values,
    require_field,
    require_measurement,
    resolve_log_call,
)
from ._measure import Timer, say
from ._model import Field, Measurement
from ._records import DataEntry, Dataset, Event, Events, TimeLike, to_ns
from ._writer import DatabaseWriter

__all__ = ["BlockMeasurer", "DataLogger", "PostProcessing"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")


class PostProcessing:
    """Post-processing hooks that run on each batch before it is written (as in 2.4)."""

    @staticmethod
    def register(*measurements: Measurement) -> Callable[[_T], _T]:
        """Mark ``func(datalogger, **{measurement_name: entries})`` as a post-processor.

        ``datalogger`` is the batch about to be written; ``log`` on it adds entries to it.
        """

        def mark(func: _T) -> _T:
            func.post_processing = True  # type: ignore[attr-defined]
            func.measurements = measurements  # type: ignore[attr-defined]
            return func

        return mark


class DataLogger:
    """Collects entries and events from any number of threads and hands them to writers.

    Every method may be called from any thread. Entries are kept grouped by measurement (as in
    influxdb-datalogger 2.4: ``datalogger._dataset`` maps Measurement -> entries, so
    ``measurement in datalogger._dataset`` works); ``dataset`` and ``events`` are copies that
    are safe to read while other threads log. Times come from the wall clock (``time_ns``),
    durations from the monotonic ``perf_counter``.

    ``continuous_write=True`` writes after every ``log`` (and so after every ``measure`` and
    ``measure_block``); a writer failure is then logged as a warning rather than raised into
    the measured code, and the data is kept for the next write. A failed writer keeps at most
    ``max_backlog`` records; beyond that the oldest are dropped and counted in ``dropped``.
    Used as a context manager, it writes and closes its writers at the end.
    """

    def __init__(
        self,
        *database_writers: DatabaseWriter,
        continuous_write: bool = False,
        max_backlog: int = 100_000,
    ) -> None:
        for writer in database_writers:
            if not isinstance(writer, DatabaseWriter):
                raise TypeError(
                    f"writer {writer!r} ({type(writer).__name__}) does not derive from "
                    f"mqsync.datalogger.DatabaseWriter"
                )
        self._db_writers: list[DatabaseWriter] = list(database_writers)
        self.continuous_write = continuous_write
        self.max_backlog = max_backlog
        self.postprocessing_functions: list[Callable[..., Any]] = []
        self.dropped = 0
        self._lock = threading.Lock()  # guards _dataset and _events; held only briefly
        self._write_lock = threading.RLock()  # one write_data at a time; guards _backlog
        self._dataset = Dataset()
        self._events = Events()
        # writer index -> the entries and events it failed to write, handed over next time
        self._backlog: dict[int, tuple[list[DataEntry], list[Event]]] = {}

    # -- reading -------------------------------------------------------------------------------

    @property
    def dataset(self) -> list[DataEntry]:
        """The entries not yet written, grouped by measurement (a copy)."""
        with self._lock:
            return self._dataset.as_list()

    @property
    def events(self) -> list[Event]:
        """The events not yet written, grouped by measurement (a copy)."""
        with self._lock:
            return self._events.as_list()

    @property
    def last_data_entry(self) -> DataEntry:
        """The last entry of :attr:`dataset`; IndexError when there is none."""
        return self.dataset[-1]

    @property
    def last_event(self) -> Event:
        """The last event of :attr:`events`; IndexError when there is none."""
        return self.events[-1]

    @property
    def db_writers(self) -> list[DatabaseWriter]:
        """The writers (a copy of the list)."""
        return list(self._db_writers)

    def __str__(self) -> str:
        with self._lock:
            return json.dumps(self._dataset, indent=2, default=str)

    # -- logging -------------------------------------------------------------------------------

    @overload
    def log(
        self,
        measurement: Measurement,
        field: str,
        value: Any,
        tag_map: TagValues | None = None,
        time: TimeLike = None,
        *,
        tags_map: TagValues | None = None,
    ) -> None: ...

    @overload
    def log(
        self,
        measurement: Measurement,
        fields_map: Mapping[Any, Any],
        tags_map: TagValues | None = None,
        time: TimeLike = None,
        *,
        tag_map: TagValues | None = None,
    ) -> None: ...

    def log(self, measurement: Measurement, *args: Any, **kwargs: Any) -> None:
        """Log one entry now (or at ``time``). Two forms, told apart by the second argument:

        - ``log(measurement, field, value, tag_map=None, time=None)``: one field's value;
        - ``log(measurement, fields_map, tags_map=None, time=None)``, as in
          influxdb-datalogger 2.4: a FieldMap (any mapping) of values.

        Either form takes its tags as ``tag_map=`` or ``tags_map=``. ``time`` is a datetime
        (naive means UTC), int nanoseconds since the epoch, or a Timestamp. Raises
        InvalidMeasurement if the entry does not fit the measurement (nothing is logged
        then), TypeError for arguments that fit neither form.
        """
        measurement = require_measurement(measurement)
        call = resolve_log_call(args, kwargs)
        tags = measurement.resolve_tags(call.tag_map)
        fields = measurement.resolve_fields(call.fields)
        self._record(DataEntry(measurement, fields, tags, time=to_ns(call.time)), None)

    def log_event(
        self,
        measurement: Measurement,
        start_time: TimeLike,
        stop_time: TimeLike,
        event_tags_map: TagValues | None = None,
        *,
        text: str | None = None,
    ) -> None:
        """Log an event from ``start_time`` to ``stop_time`` (datetimes in UTC, or int ns).

        ``measure`` and ``measure_block`` do this for you when given ``event_tags``. This does
        not trigger ``continuous_write``. Raises InvalidMeasurement if the event stops before
        it starts.
        """
        measurement = require_measurement(measurement)
        start_ns, stop_ns = to_ns(start_time), to_ns(stop_time)
        if stop_ns < start_ns:
            raise InvalidMeasurement(
                f"event of {measurement.name!r} stops before it starts ({stop_ns} < {start_ns} ns)"
            )
        event = Event.from_ns(measurement, start_ns, stop_ns, event_tag_values(event_tags_map),
                              text)
        with self._lock:
            self._events.append(event)

    def measure(
        self,
        func: Callable[..., _T],
        measurement: Measurement,
        field: Field,
        tag_map: TagValues | None = None,
        event_tags: TagValues | None = None,
        logger: logging.Logger | None = None,
        log_start: str | None = None,
        log_end: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        tags_map: TagValues | None = None,
        log_lvl: int = logging.INFO,
        text: str | None = None,
    ) -> _T:
        """Call ``func(*args, **kwargs)``, log its duration in seconds, and return its result.

        The duration is logged even when ``func`` raises; the exception then propagates.
        With ``event_tags`` an Event (start, stop, tags, ``text``) is logged as well.
        ``log_start``/``log_end`` go to ``logger`` (the ``mqsync.datalogger`` logger if none
        is given) at ``log_lvl``. Everything is checked before ``func`` runs: on
        InvalidMeasurement or TypeError ``func`` is not called.
        """
        if not callable(func):
            raise TypeError(f"measure() needs a callable, got {func!r}")
        call_args, call_kwargs = call_arguments(args, kwargs)
        timer = self._timer(measurement, field, either_tag_map(tag_map, tags_map), event_tags,
                            text)
        say(logger, log_lvl, log_start)
        timer.start()
        try:
            return func(*call_args, **call_kwargs)
        finally:
            timer.stop()
            say(logger, log_lvl, log_end)

    def measure_block(
        self,
        measurement: Measurement,
        field: Field,
        tag_map: TagValues | None = None,
        event_tags: TagValues | None = None,
        logger: logging.Logger | None = None,
        log_lvl: int = logging.INFO,
        log_start: str | None = None,
        log_end: str | None = None,
        *,
        tags_map: TagValues | None = None,
        text: str | None = None,
    ) -> BlockMeasurer:
        """A context manager that logs how long its block took (see :meth:`measure`).

        With a ``logger``, generic start/stop messages are logged unless ``log_start`` and
        ``log_end`` are given (as in 2.4). Checked at once, before the block runs.
        """
        return BlockMeasurer(
            self, measurement, field, either_tag_map(tag_map, tags_map), event_tags,
            logger, log_lvl, log_start, log_end, text=text,
        )

    # -- writing -------------------------------------------------------------------------------

    def add_post_processing(self, func: Callable[..., Any]) -> None:
        """Run ``func`` (marked with ``PostProcessing.register``) on every batch before writing."""
        if not getattr(func, "post_processing", False):
            raise TypeError(f"{func!r} is not marked with @PostProcessing.register(...)")
        self.postprocessing_functions.append(func)

    def write_data(self) -> None:
        """Hand everything logged so far to every writer, then forget it.

        Logging from other threads goes on meanwhile; what they log goes into the next batch.
        Each writer gets the batch once. A writer that raises keeps its batch (and gets it
        again next time); the others are still called, and then WriteFailed is raised.
        """
        with self._write_lock:
            entries, events = self._take_all()
            if not (entries or events or self._backlog):
                return
            batch = _batch_of(entries, events)
            try:
                self._post_process(batch)
            except BaseException:
                self._put_back(entries, events)
                raise
            failures = []
            for index, writer in enumerate(self._db_writers):
                failure = self._write_to(index, writer, batch)
                if failure is not None:
                    failures.append(failure)
            if failures:
                raise WriteFailed(failures)

    def close(self) -> None:
        """Write what is left, then close every writer."""
        try:
            self.write_data()
        finally:
            for writer in self._db_writers:
                writer.close()

    def __enter__(self) -> DataLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _timer(
        self,
        measurement: Measurement,
        field: Field,
        tag_map: TagValues | None,
        event_tags: TagValues | None,
        text: str | None,
    ) -> Timer:
        """A Timer for one duration of ``field``, everything checked before it starts."""
        measurement = require_measurement(measurement)
        return Timer(
            measurement,
            require_field(measurement, field),
            measurement.resolve_tags(tag_map),
            event_tag_values(event_tags) if event_tags else None,
            text,
            record=self._record,
        )

    def _record(self, entry: DataEntry, event: Event | None) -> None:
        """Keep ``entry`` (and ``event``) for the next batch, then write if continuous."""
        with self._lock:  # event and entry land in the same batch
            if event is not None:
                self._events.append(event)
            self._dataset.append(entry)
        if self.continuous_write:
            self._write_continuously()

    def _write_continuously(self) -> None:
        """Write now; a failure is a warning, not an exception in the code that logged."""
        try:
            self.write_data()
        except WriteFailed as error:  # the data is kept for the next write
            _log.warning("continuous write: %s", error)

    def _take_all(self) -> tuple[list[DataEntry], list[Event]]:
        """Everything logged so far, which the next log starts a new batch after."""
        with self._lock:
            entries, events = self._dataset.as_list(), self._events.as_list()
            self._dataset, self._events = Dataset(), Events()
        return entries, events

    def _post_process(self, batch: DataLogger) -> None:
        """Run the post-processors on ``batch``, each with the entries of its measurements."""
        for func in self.postprocessing_functions:
            wanted = {str(m): batch._dataset.get_entries_for_measurement(m)
                      for m in getattr(func, "measurements", ())}
            func(batch, **wanted)

    def _write_to(
        self, index: int, writer: DatabaseWriter, batch: DataLogger
    ) -> tuple[DatabaseWriter, Exception] | None:
        """Hand one writer what it kept from failed writes plus ``batch``; the failure if any."""
        kept = self._backlog.pop(index, None)
        if kept is not None:
            batch = _batch_of(kept[0] + batch.dataset, kept[1] + batch.events)
        try:
            writer.write_data(batch)
        except Exception as error:  # reported through WriteFailed
            _log.debug("writer %r failed", writer, exc_info=True)
            self._keep(index, batch.dataset, batch.events)
            return writer, error
        return None

    def _put_back(self, entries: list[DataEntry], events: list[Event]) -> None:
        """Put a batch that could not be written back before what was logged since."""
        with self._lock:
            newer_entries, newer_events = self._dataset.as_list(), self._events.as_list()
            self._dataset, self._events = Dataset(), Events()
            for entry in entries + newer_entries:
                self._dataset.append(entry)
            for event in events + newer_events:
                self._events.append(event)

    def _keep(self, index: int, entries: list[DataEntry], events: list[Event]) -> None:
        """Keep a failed writer's records for its next write, the newest ``max_backlog``."""
        excess = len(entries) + len(events) - self.max_backlog
        if excess > 0:
            entries = sorted(entries, key=lambda e: e.time_ns)
            events = sorted(events, key=lambda e: e.stop_ns)
            cut = min(excess, len(entries))
            entries, events = entries[cut:], events[excess - cut:]
            self.dropped += excess
            _log.warning("writer %r is failing: dropped the %d oldest records",
                         self._db_writers[index], excess)
        self._backlog[index] = (entries, events)


class BlockMeasurer:
    """The context manager returned by :meth:`DataLogger.measure_block`.

    ``with datalogger.measure_block(m, f, tm) as block:`` - afterwards ``block.duration`` is
    the time in seconds, ``block.start_time``/``block.end_time`` naive UTC datetimes. The
    measurement, field and tags are checked when it is made, before the block runs.
    """

    def __init__(
        self,
        datalogger: DataLogger,
        measurement: Measurement,
        field: Field,
        tags_map: TagValues | None = None,
        event_tags: TagValues | None = None,
        logger: logging.Logger | None = None,
        log_lvl: int = logging.INFO,
        log_start: str | None = None,
        log_end: str | None = None,
        *,
        text: str | None = None,
    ) -> None:
        self._timer = datalogger._timer(measurement, field, tags_map, event_tags, text)
        self.datalogger = datalogger
        self.measurement = measurement
        self.field = field
        self.logger = logger
        self.log_lvl = log_lvl
        if logger is not None:
            log_start = log_start or f"Starting block-measurement for {measurement}"
            log_end = log_end or f"Stopping block-measurement for {measurement}"
        self.log_start, self.log_end = log_start, log_end
        self.duration: float | None = None

    @property
    def start_time(self) -> datetime.datetime | None:
        """When the block began, a naive UTC datetime; None before it began."""
        return self._timer.start_time

    @property
    def end_time(self) -> datetime.datetime | None:
        """When the block ended, a naive UTC datetime; None before it ended."""
        return self._timer.end_time

    def __enter__(self) -> BlockMeasurer:
        say(self.logger, self.log_lvl, self.log_start)
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.duration = self._timer.stop()
        say(self.logger, self.log_lvl, self.log_end)


def _batch_of(entries: list[DataEntry], events: list[Event]) -> DataLogger:
    """A plain DataLogger holding exactly these records: what writers and post-processors get."""
    batch = DataLogger()  # always the base class: a subclass's __init__ may need arguments
    for entry in entries:
        batch._dataset.append(entry)
    for event in events:
        batch._events.append(event)
    return batch
