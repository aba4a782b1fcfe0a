"""mqsync-manager: the coordinator of a MetricQ network, as a library."""

from .manager import Manager
from .store import ConfigStore, MetadataStore

__all__ = ["ConfigStore", "Manager", "MetadataStore"]
