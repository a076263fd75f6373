"""A broker setup that was given up while it opened the reply copies' connection closes that
connection itself: the discard of the setup may have run meanwhile (finding nothing to close),
and a newer setup may own the service's reply copies by then.

Stand-ins for the AMQP connection and channels (nothing here talks to a broker) and for
``ReplyCopies``, whose start waits until the test lets it finish."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import service.app as app_module
from service.app import Service
from service.config import Settings


class Channel:
    async def close(self) -> None:
        return None


class Connection:
    async def channel(self, **_: Any) -> Channel:
        return Channel()


class HeldReplies:
    """Records its close; ``start`` sets ``started`` and ends when ``release`` is set."""

    def __init__(self, started: asyncio.Event) -> None:
        self.started = started
        self.release = asyncio.Event()
        self.closed = False

    async def start(self) -> None:
        self.started.set()
        await self.release.wait()

    async def close(self) -> None:
        self.closed = True


async def _no_declare(*_: Any) -> None:
    return None


async def test_a_setup_given_up_while_its_reply_copies_start_closes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[HeldReplies] = []
    started = asyncio.Event()

    def replies_factory(*_: Any, **__: Any) -> HeldReplies:
        made.append(HeldReplies(started))
        return made[-1]

    monkeypatch.setattr(app_module, "declare", _no_declare)
    monkeypatch.setattr(app_module, "ReplyCopies", replies_factory)
    service = Service(
        Settings(amqp_url="amqp://svc:pw@127.0.0.1:1/", token="t", api_url="http://127.0.0.1:1")
    )
    service._connection = Connection()  # type: ignore[assignment]
    setup = asyncio.ensure_future(service._set_up_broker(["amqp://svc:pw@127.0.0.1:1/"]))
    await asyncio.wait_for(started.wait(), 5)
    (replies,) = made
    # Given up meanwhile: its connection discarded, a newer one in its place.
    service._connection = Connection()  # type: ignore[assignment]
    replies.release.set()
    with pytest.raises(ConnectionError, match="given up"):
        await asyncio.wait_for(setup, 5)
    assert replies.closed, "the stale setup left its reply copies' connection open"
    assert service._replies is None
    await service.client.close()
