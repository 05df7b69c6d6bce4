from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygate.testing import MockUpstream

from .helpers import UPSTREAM_SECRET, Gateway, logged


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream(api_keys=[UPSTREAM_SECRET]) as mock:
        yield mock


@pytest.fixture
def mock(upstream: MockUpstream) -> Iterator[MockUpstream]:
    """The shared mock upstream, reset before each test."""
    upstream.reset()
    upstream.set_api_keys([UPSTREAM_SECRET])
    yield upstream
    upstream.reset()


@pytest.fixture(scope="module")
def gateway(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One keygate process per test module, in front of the shared mock upstream."""
    with Gateway(tmp_path_factory.mktemp("gw"), upstream.url) as gw:
        yield gw


@pytest.fixture
def client_key(gateway: Gateway) -> str:
    key: str = gateway.create_key("pytest")["key"]
    return key


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Everything logged under ``keygate`` during the test."""
    with logged("keygate") as got:
        yield got


# -- PostgreSQL (tests/postgres.py) ---------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own (random name), dropped after it."""
    from . import postgres

    with postgres.database() as url:
        yield url


@pytest.fixture
def shared_secrets() -> dict[str, str]:
    """The pepper and master key every instance on one PostgreSQL database shares (as env)."""
    from . import postgres

    return postgres.shared_secrets()
