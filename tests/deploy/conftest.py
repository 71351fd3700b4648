"""Fixtures for the deployment tests: the promtool and prometheus binaries.

Both come from Debian's ``prometheus`` package (``make tools``). Without them a
test skips on a developer machine and fails under CI=true, where a skip would
hide that the rules were never checked.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH; `make tools` installs Debian's prometheus package"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_binary("prometheus")
