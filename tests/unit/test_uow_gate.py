"""Units of work on a pooled engine take fair (FIFO) slots; nesting takes no second slot."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from handoffrail_server.db import uow


def _engine(connections: int, timeout: float = 5.0) -> AsyncEngine:
    # never connects: only the slots are exercised
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    uow.limit_connections(engine, connections, timeout)
    return engine


def test_waiters_get_slots_in_arrival_order_even_against_newcomers() -> None:
    async def scenario() -> list[int]:
        engine = _engine(2)
        order: list[int] = []

        async def unit(index: int) -> None:
            async with uow.connection_slot(engine):
                order.append(index)
                await asyncio.sleep(0.01)

        first = [asyncio.create_task(unit(index)) for index in range(6)]
        await asyncio.sleep(0.015)  # the first two finished once; others queue
        late = [asyncio.create_task(unit(index)) for index in range(6, 9)]
        await asyncio.gather(*first, *late)
        await engine.dispose()
        return order

    assert asyncio.run(scenario()) == list(range(9))


def test_a_nested_unit_takes_no_second_slot() -> None:
    async def scenario() -> str:
        engine = _engine(1)
        async with (
            uow.connection_slot(engine),
            uow.connection_slot(engine),
        ):  # would wait forever with a 2nd slot
            result = "nested"
        await engine.dispose()
        return result

    assert asyncio.run(asyncio.wait_for(scenario(), 2.0)) == "nested"


def test_waiting_past_the_pool_timeout_is_the_pool_timeout_error() -> None:
    async def scenario() -> None:
        engine = _engine(1, timeout=0.05)
        try:
            async with uow.connection_slot(engine):
                await asyncio.create_task(_enter(engine))
        finally:
            await engine.dispose()

    async def _enter(engine: AsyncEngine) -> None:
        async with uow.connection_slot(engine):
            pytest.fail("a second slot was handed out")

    with pytest.raises(sa_exc.TimeoutError, match=r"within 0\.05 s"):
        asyncio.run(scenario())


def test_an_engine_without_a_limit_is_not_gated() -> None:
    async def scenario() -> None:
        engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
        async with uow.connection_slot(engine), uow.connection_slot(engine):
            pass
        await engine.dispose()

    asyncio.run(asyncio.wait_for(scenario(), 2.0))


def test_a_slot_given_back_early_is_taken_again_in_turn_and_released_once() -> None:
    async def scenario() -> list[str]:
        engine = _engine(1, timeout=0.2)
        order: list[str] = []

        async def other() -> None:
            async with uow.connection_slot(engine):
                order.append("other")
                await asyncio.sleep(0.01)

        async with uow.connection_slot(engine):
            uow.release_slot()  # its write went to a group-commit batch
            waiting = asyncio.create_task(other())
            await asyncio.sleep(0)  # the other unit takes the freed slot
            await uow.retake_slot()  # the write changed nothing: it reads next
            order.append("again")
            uow.release_slot()
            uow.release_slot()  # a second release gives nothing back twice
            await uow.retake_slot()
        await waiting
        async with uow.connection_slot(engine):
            order.append("free")  # the one slot is back...
            with pytest.raises(sa_exc.TimeoutError):  # ...exactly once
                await asyncio.create_task(_enter(engine))
        await engine.dispose()
        return order

    async def _enter(engine: AsyncEngine) -> None:
        async with uow.connection_slot(engine):
            pass

    assert asyncio.run(asyncio.wait_for(scenario(), 2.0)) == ["other", "again", "free"]


def test_retaking_a_slot_that_was_never_given_back_takes_nothing() -> None:
    async def scenario() -> None:
        engine = _engine(1)
        async with uow.connection_slot(engine):
            await uow.retake_slot()  # would wait forever for the slot it holds
        await engine.dispose()

    asyncio.run(asyncio.wait_for(scenario(), 2.0))
