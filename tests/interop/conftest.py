"""Fixtures for interop tests: the official metricq client's interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.interop.official import InteropUnavailable
from tests.interop.official import official_python as _official_python


@pytest.fixture(scope="session")
def official_python() -> Path:
    """The interpreter of the venv holding ``metricq==5.4.0`` (built once, see official.py).

    Without it the test is skipped on a developer's machine but fails when ``CI=true``: an
    interop test that did not run must never count as passed there.
    """
    try:
        return _official_python()
    except InteropUnavailable as error:
        message = f"official metricq client unavailable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: interop tests must run)", pytrace=False)
    pytest.skip(message)
