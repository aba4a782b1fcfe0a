"""Packaging of mqsync-source-example: a template for third-party mqsync source plugins."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

setup(
    name="mqsync-source-example",
    version="0.1.0",
    description="An example mqsync source plugin: a sine wave",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    py_modules=["mqsync_source_example"],
    install_requires=["mqsync"],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        # <entry point name> = <module that implements the mqsync hooks>
        "mqsync.plugins": ["example = mqsync_source_example"],
    },
)
