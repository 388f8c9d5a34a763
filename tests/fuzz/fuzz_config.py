"""Atheris (libFuzzer for Python): the config loader - YAML text to a validated
DiffusionQuantConfig. Anything but a ConfigurationError for bad input is a finding."""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from arrowquant.config import DiffusionQuantConfig
    from arrowquant.errors import ConfigurationError


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace") + "\n"  # never taken for a file path
    with contextlib.suppress(ConfigurationError):
        DiffusionQuantConfig.from_yaml(text)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
