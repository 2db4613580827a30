"""Fixtures of the contract tests (modules that define their own `client` use theirs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from handoffrail.sdk import HandoffRailClient

from handoffrail_server.clock import FrozenClock
from tests.conftest import Api, LiveServer, bootstrap_operator_key
from tests.contract.limits_support import Db, noon_today, serve
from tests.contract.sdk_support import sync_client


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[HandoffRailClient]:
    """The sync SDK client (handoffrail-sdk 0.3.0) with the operator key."""
    with sync_client(live_server) as sdk:
        yield sdk


@pytest.fixture
async def db(migrated_url: str) -> Db:
    return Db(migrated_url, await asyncio.to_thread(bootstrap_operator_key, migrated_url))


@pytest.fixture
async def quota_api(db: Db) -> AsyncIterator[tuple[Api, FrozenClock]]:
    """Default limits with a frozen clock, for the daily handoff quota."""
    clock = noon_today()
    async with serve(db, clock=clock) as api:
        yield api, clock
