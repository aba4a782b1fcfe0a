"""Shared fixtures: the broker URL, per-test isolation and a thread-leak check."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

BROKER_URL = os.environ.get("MQSYNC_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _broker_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The RabbitMQ URL for broker tests.

    Without a broker the test is skipped on a developer's machine, but fails in CI
    (``CI=true``): a broker test that did not run must never count as passed there.
    """
    if not _broker_answers(BROKER_URL):
        message = f"no RabbitMQ answers at {urlsplit(BROKER_URL).netloc.split('@')[-1]}"
        if IN_CI:
            pytest.fail(message + " (CI=true: broker tests must run)")
        pytest.skip(message)
    return BROKER_URL


@pytest.fixture
def unique() -> str:
    """A short unique string for tokens and metric names, so tests never share data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread of its own running after it finished."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
