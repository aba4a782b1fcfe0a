"""An example mqsync source plugin: a sine wave.

Copy this package to start a plugin of your own: rename the distribution
(``mqsync-source-<thing>``), the module (``mqsync_source_<thing>``), the entry point and
the source kind, then replace :class:`SineSource`'s ``configure``, ``metrics`` and
``update``.  The SDK does the scheduling (``rate``/``period``), chunking, reconnects and the
manager's configuration.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from mqsync import ConfigError, Timestamp
from mqsync.plugin import ConfigOption, PluginSource, SourceKind, hookimpl

__version__ = "0.1.0"

#: Every configuration key, its default and meaning (shown by ``--usage``).
OPTIONS = (
    ConfigOption("rate", 10.0, "updates per second", "float"),
    ConfigOption("metric", "example.sine", "name of the metric", "str"),
    ConfigOption("amplitude", 1.0, "amplitude of the wave", "float"),
    ConfigOption("offset", 0.0, "value around which the wave swings", "float"),
    ConfigOption("wave_period", 60.0, "seconds per full wave", "float"),
)


class SineSource(PluginSource):
    """Sends ``offset + amplitude * sin(2 pi t / wave_period)`` (t: seconds since the epoch)."""

    default_config = {option.name: option.default for option in OPTIONS}

    def configure(self, config: Mapping[str, Any]) -> None:
        """Check the configuration; raise ConfigError (before connecting) when it is bad."""
        metric = config.get("metric")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"invalid metric {metric!r}: expected a metric name")
        numbers = {}
        for key in ("amplitude", "offset", "wave_period"):
            value = config.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"invalid {key} {value!r}: expected a number")
            numbers[key] = float(value)
        if not numbers["wave_period"] > 0:
            raise ConfigError(f"invalid wave_period {numbers['wave_period']!r}: expected > 0")
        self.metric = metric
        self.amplitude = numbers["amplitude"]
        self.offset = numbers["offset"]
        self.wave_period = numbers["wave_period"]

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Declared once connected and after every configuration change."""
        return {self.metric: {"unit": "", "rate": self.rate(),
                              "description": f"a sine wave of period {self.wave_period:g} s"}}

    def update(self) -> None:
        """Called every period on the SDK's scheduler thread."""
        now = Timestamp.now()
        phase = 2 * math.pi * (now.posix_ns / 1e9) / self.wave_period
        self.send(self.metric, now, self.offset + self.amplitude * math.sin(phase))


@hookimpl
def mqsync_source_kinds() -> list[SourceKind]:
    """The source kinds of this plugin: ``mqsync-source --plugin sine``."""
    return [SourceKind("sine", SineSource, "a sine wave (example plugin)", OPTIONS)]
