"""Polling many BMCs: per-host state, the retry backoff for failed hosts, and the collector
that emits each host's readings as its poll ends (no MetricQ in here)."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from concurrent.futures import Future, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from .._common import selected
from ._backends import _quote_freeipmi
from ._options import BACKOFF_SECONDS, GRACE_SECONDS
from ._parsing import sensor_metrics
from ._process import ProcessRunner, _WorkerPool
from ._values import BmcHost, Cancelled, Reading

logger = logging.getLogger(__name__)


@attrs.define
class HostState:
    """What the collector knows of one BMC."""

    failures: int = 0
    retry_at: float = 0.0
    busy: bool = False
    last_error: str = ""
    metrics: dict[str, dict[str, Any]] = attrs.Factory(dict)


MASK = "********"

# What ends a token in tool output and command lines: `-P pw`, `password=pw`, `'pw'`,
# `user:pw@host`, `[pw]`, `a\"pw\"`.  Not '-', '.' or '_': they sit inside host names,
# file names and words ("ipmi-sensors"), and a short password must not garble those.
_DELIMITERS = r"\s'\"`=:,;/@\\|&()\[\]{}<>"
_TOKEN_START = rf"(?<![^{_DELIMITERS}])"
# Sentence punctuation may follow a token too ("rejected password pw."), but only before a
# delimiter or the end, so "pw.example.com" stays whole.
_TOKEN_END = rf"(?=[.!?]*(?:[{_DELIMITERS}]|\Z))"


def secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """A regex matching each secret where it stands as a whole token, or None if none.

    A secret matches only between delimiters (start or end of the text, whitespace, quotes,
    ``= : , ; / @ \\ | &`` and brackets), never inside a longer word; a secret with spaces
    is one token.  Besides the text itself, its spellings in a Python ``repr`` and in a
    FreeIPMI configuration file (backslash escapes) match.  Empty or blank secrets match
    nothing: they cannot be told apart from the text around them.
    """
    spellings = {
        spelling
        for secret in secrets
        if secret.strip()
        for spelling in (secret, repr(secret)[1:-1], _quote_freeipmi(secret)[1:-1])
    }
    if not spellings:
        return None
    # Longest first, so a secret that contains another one is masked whole.
    alternatives = "|".join(map(re.escape, sorted(spellings, key=lambda s: (-len(s), s))))
    return re.compile(f"{_TOKEN_START}(?:{alternatives}){_TOKEN_END}")


Emit = Callable[[str, float], None]
Declare = Callable[[Mapping[str, Mapping[str, Any]]], bool]


class IpmiCollector:
    """Polls many BMCs concurrently with backoff for failed ones; no MetricQ in here.

    Args:
        hosts: the BMCs.
        backend: a :class:`FreeIpmiBackend`, :class:`IpmitoolBackend` or
            :class:`PyghmiBackend`.
        prefix: first part of the metric names.
        timeout: hard limit (seconds) for one poll of a host group.
        workers: host groups polled at once.
        sensor_include, sensor_exclude, sensor_types: which sensors to send.
        clock: monotonic seconds (tests inject a fake one to drive the backoff).
        backoff: seconds before successive retries of a failed host (the last repeats).
        name: names the worker threads.
    """

    def __init__(
        self,
        hosts: Sequence[BmcHost],
        backend: Any,
        *,
        prefix: str = "ipmi",
        timeout: float = 10.0,
        workers: int = 4,
        sensor_include: Sequence[str] = ("*",),
        sensor_exclude: Sequence[str] = (),
        sensor_types: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        backoff: Sequence[float] = BACKOFF_SECONDS,
        name: str = "ipmi",
    ):
        self.hosts = tuple(hosts)
        self.backend = backend
        self.prefix = prefix
        self.timeout = float(timeout)
        self.sensor_include = tuple(sensor_include)
        self.sensor_exclude = tuple(sensor_exclude)
        self.sensor_types = {t.lower() for t in sensor_types}
        self._clock = clock
        self._backoff = tuple(backoff)
        self._runner = ProcessRunner()
        self._pool = _WorkerPool(max(1, workers), f"mqsync-{name}-ipmi")
        self._states = {host: HostState() for host in self.hosts}
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._secret_pattern = secret_pattern(host.password.reveal() for host in self.hosts)

    # -- status --------------------------------------------------------------------------

    def state(self, host: BmcHost | str) -> HostState:
        """A copy of the state of ``host`` (a BmcHost, its address or its name)."""
        for candidate in self.hosts:
            if host in (candidate, candidate.address, candidate.name):
                with self._lock:
                    return attrs.evolve(
                        self._states[candidate], metrics=dict(self._states[candidate].metrics)
                    )
        raise KeyError(host)

    def known_metrics(self) -> dict[str, dict[str, Any]]:
        """Metadata of every metric seen so far."""
        with self._lock:
            return {
                metric: dict(entry)
                for state in self._states.values()
                for metric, entry in state.metrics.items()
            }

    # -- polling -------------------------------------------------------------------------

    def collect(self, emit: Emit, declare: Declare | None = None) -> None:
        """Poll the hosts that are due, calling ``emit(metric, value)`` per value.

        Each host's values are emitted as soon as its poll ends; hosts waiting for a retry
        emit NaN for their known metrics.  Returns after every poll ended or ``timeout``
        plus a grace period passed.  ``declare(metadata)`` is called first with metrics
        never declared (successfully) before; it returns whether that worked.
        """
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            due = [
                host
                for host in self.hosts
                if not self._states[host].busy and self._states[host].retry_at <= now
            ]
            waiting = [host for host in self.hosts if self._states[host].retry_at > now]
            for host in due:
                self._states[host].busy = True
        futures: dict[Future, list[BmcHost]] = {}
        for group in self._groups(due):
            try:
                futures[self._pool.submit(self._poll, group)] = group
            except RuntimeError:  # closed meanwhile
                with self._lock:
                    for host in group:
                        self._states[host].busy = False
        for host in waiting:
            self._emit_nan(host, emit)
        try:
            for future in as_completed(futures, timeout=self.timeout + GRACE_SECONDS):
                try:
                    outcome = future.result()
                except Exception:  # noqa: BLE001 - _poll catches; cancelled at close
                    continue
                for host, result in outcome.items():
                    if isinstance(result, list):
                        self._emit_readings(host, result, emit, declare)
                    elif result is not None:
                        self._emit_nan(host, emit)
        except FuturesTimeout:
            late = [
                host.label
                for future, group in futures.items()
                if not future.done()
                for host in group
            ]
            logger.warning(
                "ipmi: polls of %s still running after %g s; not waiting",
                ", ".join(late),
                self.timeout + GRACE_SECONDS,
            )

    def _groups(self, hosts: Sequence[BmcHost]) -> list[list[BmcHost]]:
        by_key: dict[Any, list[BmcHost]] = {}
        for host in hosts:
            by_key.setdefault(self.backend.group_key(host), []).append(host)
        size = max(1, self.backend.max_hosts)
        return [
            members[start : start + size]
            for members in by_key.values()
            for start in range(0, len(members), size)
        ]

    def _poll(self, group: list[BmcHost]) -> Mapping[BmcHost, list[Reading] | str | None]:
        """Worker thread: poll one group and book success or failure per host."""
        outcome: dict[BmcHost, list[Reading] | str | None]
        try:
            outcome = dict(self.backend.poll(group, self._runner, self.timeout))
        except Cancelled:
            outcome = {host: None for host in group}
        except Exception as error:  # noqa: BLE001 - one group's trouble is not the source's
            outcome = {host: f"{type(error).__name__}: {error}" for host in group}
        except BaseException:
            with self._lock:
                for host in group:
                    self._states[host].busy = False
            raise
        for host in group:
            result = outcome.get(host, "no result")
            if isinstance(result, str):
                result = outcome[host] = self._scrub(result)
            self._book(host, result)
        return outcome

    def _book(self, host: BmcHost, result: list[Reading] | str | None) -> None:
        with self._lock:
            state = self._states[host]
            state.busy = False
            if result is None or self._closed:
                return
            if isinstance(result, list):
                if state.failures:
                    logger.info(
                        "ipmi: BMC %s answers again after %d failed attempts",
                        host.label,
                        state.failures,
                    )
                state.failures, state.retry_at, state.last_error = 0, 0.0, ""
                return
            state.failures += 1
            delay = self._backoff[min(state.failures, len(self._backoff)) - 1]
            state.retry_at = self._clock() + delay
            state.last_error = result
            failures = state.failures
        if failures == 1:
            logger.warning(
                "ipmi: BMC %s failed: %s; sending NaN, retrying in %g s", host.label, result, delay
            )
        else:
            logger.warning(
                "ipmi: BMC %s still failing (%d attempts): %s; next retry in %g s",
                host.label,
                failures,
                result,
                delay,
            )

    def _scrub(self, text: str) -> str:
        """``text`` with every password of the hosts masked where it is a whole token."""
        if self._secret_pattern is None:
            return text
        return self._secret_pattern.sub(MASK, text)

    def _wanted(self, reading: Reading) -> bool:
        if self.sensor_types and reading.type and reading.type.lower() not in self.sensor_types:
            return False
        return selected(reading.sensor, self.sensor_include, self.sensor_exclude)

    def _emit_readings(
        self, host: BmcHost, readings: list[Reading], emit: Emit, declare: Declare | None
    ) -> None:
        base = f"{self.prefix}.{host.name}"
        values = {
            f"{base}.{segment}": reading
            for segment, reading in sensor_metrics(r for r in readings if self._wanted(r)).items()
        }
        with self._lock:
            known = self._states[host].metrics
            for metric, reading in values.items():
                if metric not in known:
                    description = f"{reading.sensor}"
                    if reading.type:
                        description += f" ({reading.type})"
                    known[metric] = {
                        "unit": reading.unit,
                        "description": f"{description} of BMC {host.name}",
                    }
            missing = [metric for metric in known if metric not in values]
            new = {metric: dict(known[metric]) for metric in values if metric not in self._declared}
        if new and declare is not None and declare(new):
            with self._lock:
                self._declared.update(new)
        for metric, reading in values.items():
            emit(metric, reading.value)
        for metric in missing:
            emit(metric, math.nan)

    def _emit_nan(self, host: BmcHost, emit: Emit) -> None:
        with self._lock:
            metrics = list(self._states[host].metrics)
        for metric in metrics:
            emit(metric, math.nan)

    # -- stopping ------------------------------------------------------------------------

    def cancel(self) -> None:
        """Poll nothing more and kill what runs; :meth:`collect` returns soon."""
        with self._lock:
            self._closed = True
        self._runner.close()

    def close(self, timeout: float = 5.0) -> bool:
        """:meth:`cancel`, then join the worker threads (bounded); True if all ended."""
        self.cancel()
        return self._pool.close(timeout)
