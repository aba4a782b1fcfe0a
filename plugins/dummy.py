"""The ``dummy`` source: random values at a configured rate, for tests and demos.

Configuration (all optional)::

    {"rate": 10, "metrics": 3, "prefix": "dummy", "min": 0.0, "max": 1.0}

sends ``dummy.0``, ``dummy.1`` and ``dummy.2`` ten times a second, each a uniform random
value between ``min`` and ``max``.  ``metrics`` may instead list names: ``["a", "b"]`` sends
``dummy.a`` and ``dummy.b`` (with ``prefix: ""``, just ``a`` and ``b``).  ``seed`` makes
the values reproducible.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import attrs

from mqsync.errors import ConfigError
from mqsync.names import BrokerURL, check_metric_name
from mqsync.plugin import ConfigOption, PluginSource, SourceKind, hookimpl
from mqsync.timeseries import Timestamp

from ._common import SCHEDULE_OPTIONS, check_known_keys, check_number, check_prefix

#: At most this many metrics: a typo like ``metrics: 1e9`` must not exhaust memory.
MAX_METRICS = 100_000

OPTIONS = (
    *SCHEDULE_OPTIONS,
    ConfigOption(
        "metrics",
        1,
        "how many metrics (named <prefix>.0, <prefix>.1, ...), or a "
        "list of metric names (each put after the prefix)",
        "any",
    ),
    ConfigOption(
        "prefix", "dummy", "metric name prefix; '' for none (with a list of names)", "str"
    ),
    ConfigOption("min", 0.0, "smallest value sent", "float"),
    ConfigOption("max", 1.0, "largest value sent", "float"),
    ConfigOption(
        "seed",
        None,
        "seed of the random generator (an int) for reproducible values; "
        "null for a different sequence each run",
        "int",
    ),
    ConfigOption("unit", "", "the metrics' unit metadata", "str"),
)


@attrs.frozen
class DummySettings:
    """A checked dummy configuration."""

    metrics: tuple[str, ...]
    low: float
    high: float
    seed: int | None
    unit: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DummySettings:
        """Check ``config``.

        Raises:
            ConfigError: a value is missing, of the wrong type or out of range.
        """
        prefix = check_prefix(config.get("prefix"), allow_empty=True)
        count_or_names = config.get("metrics")
        if isinstance(count_or_names, (list, tuple)):
            if not count_or_names:
                raise ConfigError("invalid metrics []: expected at least one name")
            names = []
            for name in count_or_names:
                if not isinstance(name, str) or not name:
                    raise ConfigError(
                        f"invalid metric name {name!r} in metrics: expected a non-empty string"
                    )
                names.append(f"{prefix}.{name}" if prefix else name)
            if len(set(names)) != len(names):
                raise ConfigError(f"invalid metrics {count_or_names!r}: names repeat")
        else:
            if not prefix:
                raise ConfigError("prefix '' needs metrics to be a list of names")
            count = check_number(config, "metrics", integer=True, positive=True)
            if count > MAX_METRICS:
                raise ConfigError(f"invalid metrics {count}: at most {MAX_METRICS}")
            names = [f"{prefix}.{index}" for index in range(count)]
        if len(names) > MAX_METRICS:
            raise ConfigError(f"invalid metrics: {len(names)} names, at most {MAX_METRICS}")
        for name in names:
            try:
                check_metric_name(name)
            except (TypeError, ValueError) as error:
                raise ConfigError(str(error)) from None
        low = float(check_number(config, "min"))
        high = float(check_number(config, "max"))
        if not low < high:
            raise ConfigError(f"invalid min {low!r} and max {high!r}: min must be below max")
        seed = config.get("seed")
        if seed is not None:
            seed = check_number(config, "seed", integer=True)
        unit = config.get("unit")
        if not isinstance(unit, str):
            raise ConfigError(f"invalid unit {unit!r}: expected a string such as 'W'")
        return cls(tuple(names), low, high, seed, unit)


class DummySource(PluginSource):
    """Sends uniform random values to every configured metric on each update."""

    default_config = {option.name: option.default for option in OPTIONS}

    def __init__(self, token: str, url: BrokerURL | None = None, **kwargs: Any):
        self._settings: DummySettings | None = None
        self._random = random.Random()
        super().__init__(token, url, **kwargs)

    def configure(self, config: Mapping[str, Any]) -> None:
        check_known_keys("dummy", config, OPTIONS)
        settings = DummySettings.from_config(config)
        if settings != self._settings:
            # A new Random, so update() on the other thread never sees a half-seeded one.
            self._random = random.Random(settings.seed)
            self._settings = settings

    def metrics(self) -> dict[str, dict[str, Any]]:
        settings = self._settings
        assert settings is not None
        rate = self.rate()
        description = f"uniform random values between {settings.low:g} and {settings.high:g}"
        metadata: dict[str, Any] = {"unit": settings.unit, "description": description}
        if rate is not None:
            metadata["rate"] = rate
        return {name: dict(metadata) for name in settings.metrics}

    def update(self) -> None:
        settings = self._settings
        generator = self._random
        assert settings is not None
        now = Timestamp.now()
        for name in settings.metrics:
            self.send(name, now, generator.uniform(settings.low, settings.high))


@hookimpl
def mqsync_source_kinds() -> list[SourceKind]:
    """The ``dummy`` source kind."""
    return [
        SourceKind(
            "dummy", DummySource, "random values at a configured rate (tests, demos)", OPTIONS
        )
    ]
