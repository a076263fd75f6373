"""An HTTP hop between the service in its container and the simulator that can hold the
answers to cluster creates: the create reaches the simulator (the cluster exists), but the
service hears nothing until the test releases it. That is work in flight for exactly as long
as a test needs, known by a condition rather than guessed with a latency."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import web

__all__ = ["ApiGate"]

# Headers that describe one hop's connection, not the request or the answer (bodies are
# forwarded decoded, so their encoding and length are the new hop's).
_HOP_BY_HOP: Final = frozenset(
    {
        "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
        "host", "te", "upgrade",
    }
)  # fmt: skip


class ApiGate:
    """Forwards every request to ``upstream``; while ``holding``, keeps the answers to
    ``POST /v2/databases`` until :meth:`release`."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self.holding = False
        self.held = 0
        self._released = asyncio.Event()
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        """Listen on a free loopback port; the gate's base URL."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def hold_creates(self) -> None:
        """From now on, answers to creates wait for :meth:`release`."""
        self._released.clear()
        self.holding = True

    def release(self) -> None:
        """Let every held answer go, and hold no more."""
        self.holding = False
        self._released.set()

    async def wait_held(self, count: int = 1, timeout: float = 30) -> None:
        """Until ``count`` creates have reached the simulator with their answers held."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.held >= count), timeout)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self._upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            answer_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            status = upstream.status
        if self.holding and request.method == "POST" and request.path == "/v2/databases":
            async with self._changed:
                self.held += 1
                self._changed.notify_all()
            await self._released.wait()
        return web.Response(status=status, body=body, headers=answer_headers)
