"""The sysinfo source plugin: the computation on synthetic snapshots (rates, resets, wraps,
devices coming and going), sanity against psutil, and the source on the embedded network."""

from __future__ import annotations

import collections
import math
import time
import types

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqsync.errors import ConfigError
from mqsync.names import check_metric_name
from mqsync_plugins.sysinfo import (
    MIN_INTERVAL_SECONDS,
    Snapshot,
    SysinfoCalculator,
    SysinfoSource,
    counter_rate,
    cpu_usage,
)
from tests._support import RecordingSink, wait_until

BASE = "sysinfo.testhost"


def calculator(**overrides) -> SysinfoCalculator:
    return SysinfoCalculator.from_config({**SysinfoSource.default_config, "host": "testhost",
                                          **overrides})


def nic(sent=0, recv=0, packets_sent=0, packets_recv=0):
    return {"bytes_sent": sent, "bytes_recv": recv, "packets_sent": packets_sent,
            "packets_recv": packets_recv}


def disk(read=0, written=0, reads=0, writes=0, busy_ms=0):
    return {"read_bytes": read, "write_bytes": written, "read_count": reads,
            "write_count": writes, "busy_time": busy_ms}


def cpu(user=0.0, system=0.0, idle=0.0, iowait=0.0, guest=0.0):
    return {"user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": iowait,
            "irq": 0.0, "softirq": 0.0, "steal": 0.0, "guest": guest, "guest_nice": 0.0}


# -- the computation ----------------------------------------------------------------------------


def test_cpu_usage_from_times():
    old = cpu(user=10, system=5, idle=80, iowait=5)
    new = cpu(user=16, system=7, idle=86, iowait=6, guest=3)  # guest is part of user
    # busy 6 + 2 = 8 of 8 + 6 + 1 = 15
    assert cpu_usage(old, new) == pytest.approx(100 * 8 / 15)
    assert cpu_usage(old, old) is None  # no time passed
    assert cpu_usage(new, old) is None  # went back: reset
    assert cpu_usage({}, new) is None


def test_total_and_per_core_cpu():
    previous = Snapshot(0.0, cpu_total=cpu(user=10, idle=10),
                        cpu_cores=[cpu(user=5, idle=5), cpu(user=5, idle=5)])
    current = Snapshot(1.0, cpu_total=cpu(user=11, idle=11),
                       cpu_cores=[cpu(user=6, idle=5), cpu(user=5, idle=6)])
    values = calculator().compute(previous, current)
    assert values[f"{BASE}.cpu.usage"] == 50.0
    assert values[f"{BASE}.cpu.0.usage"] == 100.0
    assert values[f"{BASE}.cpu.1.usage"] == 0.0
    assert f"{BASE}.cpu.0.usage" not in calculator(per_core=False).compute(previous, current)


def test_rates_are_differences_per_second():
    previous = Snapshot(10.0, nics={"eth0": nic(1000, 5000, 10, 50)},
                        disks={"sda": disk(4096, 8192, 1, 2, 100)}, swap={"sin": 0, "sout": 0})
    current = Snapshot(12.0, nics={"eth0": nic(3000, 5000, 14, 50)},
                       disks={"sda": disk(8192, 8192, 3, 2, 1100)},
                       swap={"sin": 4096, "sout": 0})
    values = calculator().compute(previous, current)
    assert values[f"{BASE}.net.eth0.sent.bytes"] == 1000.0
    assert values[f"{BASE}.net.eth0.recv.bytes"] == 0.0
    assert values[f"{BASE}.net.eth0.sent.packets"] == 2.0
    assert values[f"{BASE}.disk.sda.read.bytes"] == 2048.0
    assert values[f"{BASE}.disk.sda.read.count"] == 1.0
    assert values[f"{BASE}.disk.sda.busy"] == 50.0  # 1000 ms busy in 2 s
    assert values[f"{BASE}.swap.in"] == 2048.0


def test_first_snapshot_gives_gauges_only():
    snapshot = Snapshot(1.0, cpu_total=cpu(user=1, idle=1), memory={"total": 8e9, "percent": 5},
                        nics={"eth0": nic(1, 1)}, load=(0.5, 0.25, 0.125))
    values = calculator().compute(None, snapshot)
    assert values == {f"{BASE}.mem.total": 8e9, f"{BASE}.mem.percent": 5.0,
                      f"{BASE}.load.1min": 0.5, f"{BASE}.load.5min": 0.25,
                      f"{BASE}.load.15min": 0.125}


def test_a_counter_reset_sends_nothing_for_that_interval_then_resumes():
    samples = [Snapshot(0.0, nics={"eth0": nic(5_000_000)}),
               Snapshot(1.0, nics={"eth0": nic(100)}),  # reset: the NIC was re-created
               Snapshot(2.0, nics={"eth0": nic(300)})]
    calc = calculator()
    assert f"{BASE}.net.eth0.sent.bytes" not in calc.compute(samples[0], samples[1])
    assert calc.compute(samples[1], samples[2])[f"{BASE}.net.eth0.sent.bytes"] == 200.0


def test_a_32_bit_wrap_sends_no_negative_or_huge_rate():
    before = Snapshot(0.0, nics={"eth0": nic(2**32 - 1000)}, disks={"sda": disk(busy_ms=2**32 - 1)})
    after = Snapshot(1.0, nics={"eth0": nic(500)}, disks={"sda": disk(busy_ms=10)})
    values = calculator().compute(before, after)
    assert f"{BASE}.net.eth0.sent.bytes" not in values
    assert f"{BASE}.disk.sda.busy" not in values
    assert all(v >= 0 for v in values.values())


def test_no_time_passed_gives_no_rates():
    same = Snapshot(5.0, nics={"eth0": nic(1)})
    assert not calculator().compute(same, Snapshot(5.0, nics={"eth0": nic(2)}))


@given(st.lists(st.tuples(st.floats(0.001, 100), st.integers(0, 2**64)), min_size=2,
                max_size=20))
def test_rates_are_never_negative(samples):
    calc = calculator()
    clock, previous = 0.0, None
    for step, counter in samples:
        clock += step
        current = Snapshot(clock, nics={"eth0": nic(counter, counter, counter, counter)},
                           disks={"sda": disk(counter, counter, counter, counter, counter)})
        for metric, value in calc.compute(previous, current).items():
            assert value >= 0 and math.isfinite(value), metric
            if metric.endswith(".busy"):
                assert value <= 100
        previous = current


def test_counter_rate():
    assert counter_rate(10, 30, 2.0) == 10.0
    assert counter_rate(30, 10, 2.0) is None
    assert counter_rate(None, 10, 2.0) is None
    assert counter_rate(10, 30, 0.0) is None


def test_new_and_vanished_network_interfaces():
    calc = calculator()
    first = Snapshot(0.0, nics={"eth0": nic(100)})
    second = Snapshot(1.0, nics={"eth0": nic(200), "wwan0": nic(10)})  # plugged in
    third = Snapshot(2.0, nics={"wwan0": nic(30)})  # eth0 gone
    assert f"{BASE}.net.wwan0.sent.bytes" in calc.metadata(second)
    assert f"{BASE}.net.wwan0.sent.bytes" not in calc.compute(first, second)  # needs 2 samples
    values = calc.compute(second, third)
    assert values[f"{BASE}.net.wwan0.sent.bytes"] == 20.0
    assert not any(".eth0." in metric for metric in values)
    assert not any(".eth0." in metric for metric in calc.metadata(third))


def test_default_interface_and_disk_filters():
    snapshot = Snapshot(0.0, nics={n: nic() for n in ("lo", "br-1a2b", "docker0", "veth12ab",
                                                      "eth0", "eth0.100")},
                        disks={d: disk() for d in ("sda", "sda1", "loop0", "ram0", "zram0",
                                                   "nvme0n1")})
    calc = calculator()
    assert calc.nics(snapshot) == {"eth0": "eth0", "eth0_100": "eth0.100"}
    assert set(calc.disks(snapshot)) == {"sda", "sda1", "nvme0n1"}
    only_eth = calculator(nic_include=["eth*"], nic_exclude=[], disk_exclude=["sda*"])
    assert set(only_eth.nics(snapshot)) == {"eth0", "eth0_100"}
    assert set(only_eth.disks(snapshot)) == {"loop0", "ram0", "zram0", "nvme0n1"}


def test_metadata_has_unit_rate_and_description():
    snapshot = Snapshot(0.0, cpu_total=cpu(), cpu_cores=[cpu()], memory={"total": 1.0,
                        "percent": 1.0}, swap={"total": 0, "percent": 0, "sin": 0},
                        nics={"eth0": nic()}, disks={"sda": disk()}, load=(0, 0, 0))
    metadata = calculator(prefix="site.sysinfo").metadata(snapshot, rate=2.0)
    assert metadata["site.sysinfo.testhost.cpu.usage"]["unit"] == "%"
    assert metadata["site.sysinfo.testhost.mem.total"]["unit"] == "B"
    assert metadata["site.sysinfo.testhost.net.eth0.recv.bytes"]["unit"] == "B/s"
    assert metadata["site.sysinfo.testhost.disk.sda.read.count"]["unit"] == "1/s"
    assert metadata["site.sysinfo.testhost.swap.in"]["unit"] == "B/s"
    for name, entry in metadata.items():
        check_metric_name(name)
        assert entry["rate"] == 2.0 and entry["description"] and "unit" in entry


def test_only_the_configured_groups():
    snapshot = Snapshot(0.0, cpu_total=cpu(), memory={"total": 1.0}, load=(0, 0, 0))
    assert set(calculator(collect=["mem"]).metadata(snapshot)) == {f"{BASE}.mem.total"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"collect": ["cpu", "gpu"]}, "unknown ['gpu']"),
    ({"collect": "cpu"}, "invalid collect"),
    ({"host": "node.01"}, "invalid host"),
    ({"prefix": "a b"}, "invalid prefix"),
    ({"per_core": "yes"}, "invalid per_core"),
    ({"nic_exclude": "lo"}, "invalid nic_exclude"),
])
def test_bad_configuration(overrides, message):
    with pytest.raises(ConfigError) as error:
        calculator(**overrides)
    assert message in str(error.value)


def test_default_host_is_the_short_hostname_as_a_segment(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "Node_7.Cluster.example.org")
    calc = SysinfoCalculator.from_config(SysinfoSource.default_config)
    assert calc.base == "sysinfo.node_7"


# -- against psutil -----------------------------------------------------------------------------


def test_real_snapshots_are_sane():
    calc = calculator()
    first = Snapshot.take()
    time.sleep(0.2)
    second = Snapshot.take()
    values = calc.compute(first, second)
    cores = [v for m, v in values.items() if m.startswith(f"{BASE}.cpu.") and m.count(".") == 4]
    assert len(cores) == psutil.cpu_count()
    assert all(0.0 <= v <= 100.0 for v in cores)
    assert 0.0 <= values[f"{BASE}.cpu.usage"] <= 100.0
    assert values[f"{BASE}.mem.total"] == psutil.virtual_memory().total
    assert values[f"{BASE}.swap.total"] == psutil.swap_memory().total
    assert all(v >= 0 for m, v in values.items() if ".net." in m or ".disk." in m)
    for nic_name in psutil.net_io_counters(pernic=True):
        if nic_name == "lo":
            assert not any(".net.lo." in m for m in values)
    assert set(values) <= set(calc.metadata(second))
    for name in calc.metadata(second):
        check_metric_name(name)


# -- the source ---------------------------------------------------------------------------------

_nt_nic = collections.namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv")
_nt_cpu = collections.namedtuple("scputimes", "user system idle")


class FakePsutil(types.SimpleNamespace):
    """psutil with network interfaces that the test plugs in and out."""

    def __init__(self):
        super().__init__(nics={"eth0": _nt_nic(0, 0, 0, 0)}, ticks=0, fail_disks=True)

    def cpu_times(self, percpu=False):
        self.ticks += 1
        times = _nt_cpu(self.ticks, 0.0, self.ticks)
        return [times, times] if percpu else times

    def virtual_memory(self):
        return psutil.virtual_memory()

    def swap_memory(self):
        return psutil.swap_memory()

    def disk_io_counters(self, perdisk=False, nowrap=True):
        if self.fail_disks:
            raise FileNotFoundError("/proc/diskstats vanished")
        return {}

    def net_io_counters(self, pernic=False, nowrap=True):
        return dict(self.nics)

    def getloadavg(self):
        return (1.0, 2.0, 3.0)


def test_hot_plugged_interfaces_are_declared_and_never_crash_the_source(unique):
    fake = FakePsutil()
    prefix = f"sys{unique}"
    config = {"rate": 50, "prefix": prefix, "host": "box"}
    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe([f"{prefix}.box.net.wwan0.sent.bytes", f"{prefix}.box.net.eth0.sent.bytes"])
        with SysinfoSource(f"source-sysinfo-{unique}", config=config,
                           psutil_module=fake) as source:
            assert wait_until(lambda: source.schedule_stats().updates >= 3)
            fake.nics = {"eth0": _nt_nic(1000, 0, 1, 0), "wwan0": _nt_nic(0, 0, 0, 0)}
            assert wait_until(lambda: f"{prefix}.box.net.wwan0.sent.bytes" in source.get_metrics(
                selector=[f"{prefix}.box.net.wwan0.sent.bytes"]))
            fake.nics = {"wwan0": _nt_nic(500, 0, 5, 0)}  # eth0 unplugged, wwan0 counts
            assert wait_until(lambda: sink.count(f"{prefix}.box.net.wwan0.sent.bytes") >= 1)
            fake.fail_disks = False
            runs = source.schedule_stats().updates
            assert wait_until(lambda: source.schedule_stats().updates >= runs + 3)
            assert source.schedule_stats().failures == 0
    assert all(v >= 0 for _, _, v in sink.points)


def test_the_real_source_sends_to_a_sink(unique):
    prefix = f"sys{unique}"
    config = {"rate": 20, "prefix": prefix, "host": "me"}
    wanted = [f"{prefix}.me.cpu.usage", f"{prefix}.me.mem.total", f"{prefix}.me.load.1min"]
    with RecordingSink(f"sink-{unique}") as sink:
        sink.subscribe(wanted)
        with SysinfoSource(f"source-sysinfo-{unique}", config=config) as source:
            assert wait_until(lambda: all(sink.count(m) >= 3 for m in wanted))
            metadata = source.get_metrics(selector=wanted)
    assert metadata[f"{prefix}.me.cpu.usage"]["rate"] == 20
    assert metadata[f"{prefix}.me.mem.total"]["unit"] == "B"
    usage = [v for m, _, v in sink.points if m == f"{prefix}.me.cpu.usage"]
    assert all(0 <= v <= 100 for v in usage)
    totals = {v for m, _, v in sink.points if m == f"{prefix}.me.mem.total"}
    assert totals == {float(psutil.virtual_memory().total)}


def test_too_short_an_interval_gives_gauges_only():
    previous = Snapshot(0.0, cpu_total=cpu(user=1, idle=1), nics={"eth0": nic(0)})
    current = Snapshot(0.01, cpu_total=cpu(user=1.01, idle=1), nics={"eth0": nic(10)},
                       memory={"total": 1.0})
    assert calculator().compute(previous, current) == {f"{BASE}.mem.total": 1.0}


def test_sysinfo_asks_once_for_a_priming_sample_long_enough_for_rates():
    # mqsync-source --once: a priming update, this long a pause, then the update it sends
    assert SysinfoSource.priming_interval >= MIN_INTERVAL_SECONDS


def test_two_updates_a_priming_interval_apart_send_every_declared_metric(unique):
    fake = FakePsutil()
    fake.fail_disks = False
    config = {"prefix": f"sys{unique}", "host": "box"}
    source = SysinfoSource(f"source-sysinfo-{unique}", config=config, psutil_module=fake,
                           schedule=False)
    sent: dict[str, float] = {}
    source.send = lambda metric, time, value: sent.__setitem__(metric, value)
    with source:
        declared = set(source.metrics())
        source.update()
        time.sleep(SysinfoSource.priming_interval)
        sent.clear()
        source.update()
    assert set(sent) == declared and any(".net.eth0." in name for name in declared)
