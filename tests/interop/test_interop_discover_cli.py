"""mqsync-discover (a subprocess) finds an official metricq client next to mqsync ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import mqsync
from tests.interop.official import start_peer

pytestmark = [pytest.mark.broker, pytest.mark.interop]


def test_mqsync_discover_cli_lists_an_official_client(manager, official_python, unique,
                                                      tmp_path):
    token = f"official-{unique}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MQSYNC_")}
    env["HOME"] = str(tmp_path)  # no ~/.config/mqsync/cli.toml of the caller
    with start_peer("official_rpc.py", "--url", manager.url, "--serve", "--token", token,
                    "--timeout", 60) as server:
        server.wait_for("ready", timeout=60)
        with mqsync.Client(f"client-{unique}", manager.url, client_version="1.2.3"):
            result = subprocess.run(
                [sys.executable, "-m", "mqsync.cli.discover", "--url", manager.url, "--json",
                 "--timeout", "1.5"], capture_output=True, text=True, env=env, timeout=60)
        server.finish(timeout=30)
    assert result.returncode == 0, result.stderr
    clients = {c["token"]: c for c in json.loads(result.stdout)["clients"]}
    official = clients[token]
    assert official["library"].startswith("metricq-python/")
    assert official["hostname"] and official["uptime_s"] > 0
    assert official["current_time"] is not None
    assert official["offset_s"] is not None and abs(official["offset_s"]) < 0.5
    ours = clients[f"client-{unique}"]
    assert ours["version"] == "1.2.3" and ours["library"].startswith("mqsync/")
    assert "manager" in clients
