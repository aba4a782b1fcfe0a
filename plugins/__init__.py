"""The built-in source plugins of mqsync (dummy, sysinfo, ipmi), installed as
``mqsync_plugins`` and registered through the entry point group ``mqsync.plugins``."""
