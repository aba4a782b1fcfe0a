"""The ``ipmi`` source itself: a :class:`~mqsync.plugin.PluginSource` around a collector."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from mqsync.names import BrokerURL
from mqsync.plugin import PluginSource
from mqsync.timeseries import Timestamp

from .._common import check_known_keys
from ._collector import IpmiCollector
from ._config import IpmiSettings
from ._options import OPTIONS

logger = logging.getLogger(__name__)


class IpmiSource(PluginSource):
    """Sends the sensor readings of the configured BMCs.

    Args:
        backoff_clock: monotonic seconds for the retry backoff (tests).

    Other arguments as :class:`~mqsync.plugin.PluginSource`.
    """

    default_config = {option.name: option.default for option in OPTIONS}

    def __init__(
        self,
        token: str,
        url: BrokerURL | None = None,
        *,
        backoff_clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ):
        self._backoff_clock = backoff_clock
        self._settings: IpmiSettings | None = None
        self._collector: IpmiCollector | None = None
        super().__init__(token, url, **kwargs)

    @property
    def collector(self) -> IpmiCollector:
        """The collector for the current configuration."""
        assert self._collector is not None
        return self._collector

    def configure(self, config: Mapping[str, Any]) -> None:
        check_known_keys("ipmi", config, OPTIONS)
        settings = IpmiSettings.from_config(config)
        if settings == self._settings:
            return
        collector = settings.make_collector(name=self.token, clock=self._backoff_clock)
        # The config handler and update() never run at once (the client's callback lock):
        # the next update() polls with the new collector.
        old, self._collector, self._settings = self._collector, collector, settings
        if old is not None:
            old.close()
        logger.info(
            "%s: polling %d BMCs with %s", self.token, len(settings.hosts), settings.backend
        )

    def metrics(self) -> dict[str, dict[str, Any]]:
        metrics = self.collector.known_metrics()
        rate = self.rate()
        if rate is not None:
            for entry in metrics.values():
                entry["rate"] = rate
        return metrics

    def update(self) -> None:
        collector = self._collector
        if collector is None:
            return
        now = Timestamp.now()
        collector.collect(lambda metric, value: self.send(metric, now, value), self._declare)

    def _declare(self, metadata: Mapping[str, Mapping[str, Any]]) -> bool:
        rate = self.rate()
        entries = {
            name: {**entry, **({"rate": rate} if rate is not None else {})}
            for name, entry in metadata.items()
        }
        return self.declare_new_metrics(entries)

    def interrupt(self) -> None:
        collector = self._collector
        if collector is not None:
            collector.cancel()  # kill running tools so the update returns now

    def close(self, timeout: float) -> None:
        collector = self._collector
        if collector is not None:
            collector.close(timeout)
