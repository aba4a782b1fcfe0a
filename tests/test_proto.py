"""The protobuf messages described in code: golden vectors both ways, and pool isolation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from mqsync._proto import DataChunk, HistoryRequest, HistoryResponse, messages

# Hex of serialized messages, from PROTOCOL.md ("Data").
DATACHUNK_HEX = "0a0a8094ebdc038094ebdc031210000000000000f03f0000000000000440"
DATACHUNK_CHUNK3_HEX = (
    "0a138080a8b1e39fe7cb178094ebdc0380cab5ee0112180000000000000000000000000000f03f0000000000000040"
)
HISTORY_REQUEST_HEX = "0801100218032003"
HISTORY_RESPONSE_HEX = "1203e8070a3a10000000000000f03f0000000000000040"


def test_datachunk_golden_encode() -> None:
    chunk = DataChunk(time_delta=[1_000_000_000, 1_000_000_000], value=[1.0, 2.5])
    assert chunk.SerializeToString().hex() == DATACHUNK_HEX


def test_datachunk_golden_decode() -> None:
    chunk = DataChunk.FromString(bytes.fromhex(DATACHUNK_HEX))
    assert list(chunk.time_delta) == [1_000_000_000, 1_000_000_000]
    assert list(chunk.value) == [1.0, 2.5]


def test_datachunk_chunk3_golden_encode() -> None:
    chunk = DataChunk(
        time_delta=[1_700_000_000_000_000_000, 1_000_000_000, 500_000_000], value=[0.0, 1.0, 2.0]
    )
    assert chunk.SerializeToString().hex() == DATACHUNK_CHUNK3_HEX


def test_datachunk_chunk3_golden_decode() -> None:
    chunk = DataChunk.FromString(bytes.fromhex(DATACHUNK_CHUNK3_HEX))
    assert list(chunk.time_delta) == [1_700_000_000_000_000_000, 1_000_000_000, 500_000_000]
    assert list(chunk.value) == [0.0, 1.0, 2.0]


def test_history_request_golden_encode() -> None:
    request = HistoryRequest(
        start_time=1, end_time=2, interval_max=3, type=HistoryRequest.FLEX_TIMELINE
    )
    assert request.SerializeToString().hex() == HISTORY_REQUEST_HEX


def test_history_request_golden_decode() -> None:
    request = HistoryRequest.FromString(bytes.fromhex(HISTORY_REQUEST_HEX))
    assert (request.start_time, request.end_time, request.interval_max) == (1, 2, 3)
    assert request.type == HistoryRequest.FLEX_TIMELINE
    assert HistoryRequest.RequestType.Name(request.type) == "FLEX_TIMELINE"


def test_history_request_enum_values() -> None:
    names = ["AGGREGATE_TIMELINE", "AGGREGATE", "LAST_VALUE", "FLEX_TIMELINE"]
    assert [HistoryRequest.RequestType.Value(name) for name in names] == [0, 1, 2, 3]
    assert list(HistoryRequest.RequestType.keys()) == names
    assert HistoryRequest.LAST_VALUE == 2
    # The default (AGGREGATE_TIMELINE = 0) is not on the wire in proto3.
    assert HistoryRequest(type=HistoryRequest.AGGREGATE_TIMELINE).SerializeToString() == b""


def test_history_response_golden_encode() -> None:
    response = HistoryResponse(time_delta=[1000, 10], value=[1.0, 2.0])
    assert response.SerializeToString().hex() == HISTORY_RESPONSE_HEX


def test_history_response_golden_decode() -> None:
    response = HistoryResponse.FromString(bytes.fromhex(HISTORY_RESPONSE_HEX))
    assert list(response.time_delta) == [1000, 10]
    assert list(response.value) == [1.0, 2.0]
    assert response.metric == "" and response.error == ""
    assert len(response.aggregate) == 0


def test_history_response_aggregate_round_trip() -> None:
    response = HistoryResponse(metric="a.b", error="")
    response.time_delta.extend([5, 6])
    response.aggregate.add(
        minimum=-1.0, maximum=2.0, sum=3.5, count=2**64 - 1, integral=0.25, active_time=-7
    )
    response.aggregate.add(count=1)
    for field in ("value_min", "value_max", "value_avg"):
        getattr(response, field).extend([1.5, 2.5])
    decoded = HistoryResponse.FromString(response.SerializeToString())
    assert decoded == response
    first = decoded.aggregate[0]
    assert (first.minimum, first.maximum, first.sum, first.count) == (-1.0, 2.0, 3.5, 2**64 - 1)
    assert (first.integral, first.active_time) == (0.25, -7)
    assert list(decoded.value_avg) == [1.5, 2.5]
    assert isinstance(first, HistoryResponse.Aggregate)


def test_field_numbers_match_protocol() -> None:
    def numbers(message_class) -> dict[str, int]:
        return {field.name: field.number for field in message_class.DESCRIPTOR.fields}

    assert numbers(DataChunk) == {"time_delta": 1, "value": 2}
    assert numbers(HistoryRequest) == {"start_time": 1, "end_time": 2, "interval_max": 3, "type": 4}
    assert numbers(HistoryResponse) == {
        "metric": 1,
        "time_delta": 2,
        "value_min": 3,
        "value_max": 4,
        "value_avg": 5,
        "aggregate": 6,
        "value": 7,
        "error": 8,
    }
    assert numbers(HistoryResponse.Aggregate) == {
        "minimum": 1,
        "maximum": 2,
        "sum": 3,
        "count": 4,
        "integral": 5,
        "active_time": 6,
    }


def test_full_names_are_metricq() -> None:
    assert DataChunk.DESCRIPTOR.full_name == "metricq.DataChunk"
    assert HistoryRequest.DESCRIPTOR.full_name == "metricq.HistoryRequest"
    assert HistoryResponse.DESCRIPTOR.full_name == "metricq.HistoryResponse"
    assert HistoryResponse.Aggregate.DESCRIPTOR.full_name == "metricq.HistoryResponse.Aggregate"


def test_messages_live_in_a_private_pool() -> None:
    """The default pool stays free for another package's generated metricq modules."""
    assert messages.POOL is not descriptor_pool.Default()
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("metricq.DataChunk")
    assert DataChunk.DESCRIPTOR.file.pool is messages.POOL


def test_same_names_in_another_pool_do_not_clash() -> None:
    other_pool = descriptor_pool.DescriptorPool()
    other_pool.AddSerializedFile(messages._file_descriptor_proto().SerializeToString())
    other = messages._message_class(other_pool, "metricq.DataChunk")
    payload = DataChunk(time_delta=[1, 2], value=[3.0, 4.0]).SerializeToString()
    assert other is not DataChunk
    assert list(other.FromString(payload).time_delta) == [1, 2]


# Registers metricq.DataChunk in the default pool, as the official client's generated
# datachunk_pb2 does, before and after importing mqsync's messages.
_DEFAULT_POOL_SCRIPT = """
import sys
from google.protobuf import descriptor_pb2, descriptor_pool
def register_official():
    file = descriptor_pb2.FileDescriptorProto(name="datachunk.proto", package="metricq",
                                              syntax="proto3")
    chunk = file.message_type.add(name="DataChunk")
    chunk.field.add(name="time_delta", number=1, type=3, label=3)
    chunk.field.add(name="value", number=2, type=1, label=3)
    descriptor_pool.Default().AddSerializedFile(file.SerializeToString())
if sys.argv[1] == "first":
    register_official()
from mqsync.chunk import decode_chunk, encode_chunk
if sys.argv[1] == "last":
    register_official()
assert decode_chunk(encode_chunk([5, 7], [1.0, 2.0])) == ([5, 7], [1.0, 2.0])
print("ok")
"""


@pytest.mark.parametrize("official", ["first", "last"])
def test_coexists_with_official_generated_module(official: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _DEFAULT_POOL_SCRIPT, official],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
