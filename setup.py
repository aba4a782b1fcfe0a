"""Packaging for mqsync: one distribution, the SDK and its built-in source plugins."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    """``__version__`` from mqsync/_version.py, read without importing mqsync (whose
    dependencies may not be installed yet)."""
    text = (HERE / "mqsync" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError('mqsync/_version.py has no line __version__ = "..."')
    return match.group(1)


setup(
    name="mqsync",
    version=read_version(),
    description="A synchronous, thread-based Python SDK for MetricQ networks",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["mqsync", "mqsync.*"])
    + ["mqsync_plugins" + name[len("plugins"):]
       for name in find_packages(include=["plugins", "plugins.*"])],
    package_dir={"mqsync_plugins": "plugins"},
    # PEP 561: the annotations are part of the API
    package_data={"mqsync": ["py.typed"]},
    install_requires=[
        "kombu>=5.3",
        "pluggy>=1.0",
        "attrs>=22.2",
        "protobuf>=4.21",
        # the manager's get_metrics selectors: regular expressions matched in linear time
        "google-re2>=1.1",
        'tomli>=2; python_version<"3.11"',
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "freezegun>=1.2",
            "hypothesis>=6",
            "ruff>=0.4",
            "mypy>=1.10",
            "types-protobuf",
            "types-psutil",
            "influxdb>=5.3",
            "matplotlib>=3.6",
            "psutil>=5.9",
        ],
        # the built-in sysinfo source (mqsync-source --plugin sysinfo)
        "sysinfo": ["psutil>=5.9"],
        "influx": ["influxdb>=5.3"],
        "plot": ["matplotlib>=3.6"],
    },
    entry_points={
        "console_scripts": [
            "mqsync-manager = mqsync.cli.manager:main",
            "mqsync-source = mqsync.cli.source:main",
            "mqsync-sink = mqsync.cli.sink:main",
            "mqsync-measure = mqsync.cli.measure:main",
            "mqsync-db = mqsync.cli.db:main",
            "mqsync-discover = mqsync.cli.discover:main",
            "mqsync-inspect = mqsync.cli.inspect_metric:main",
            "mqsync-send = mqsync.cli.send:main",
            "mqsync-check = mqsync.cli.check:main",
            "mqsync-export = mqsync.cli.export:main",
        ],
        "mqsync.plugins": [
            "dummy = mqsync_plugins.dummy",
            "sysinfo = mqsync_plugins.sysinfo",
            "ipmi = mqsync_plugins.ipmi",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: System :: Monitoring",
    ],
)
