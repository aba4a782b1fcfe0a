"""The MetricQ protobuf messages (private; use :mod:`mqsync.chunk` for data chunks)."""

from mqsync._proto.messages import DataChunk, HistoryRequest, HistoryResponse

__all__ = ["DataChunk", "HistoryRequest", "HistoryResponse"]
