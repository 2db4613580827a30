"""Fixtures of the contract tests (modules that define their own `client` use theirs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from handoffrail.sdk import HandoffRailClient

from tests.conftest import LiveServer
from tests.contract.sdk_support import sync_client


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[HandoffRailClient]:
    """The sync SDK client (handoffrail-sdk 0.3.0) with the operator key."""
    with sync_client(live_server) as sdk:
        yield sdk
