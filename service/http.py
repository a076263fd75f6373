"""The operator's HTTP endpoints: ``/healthz`` (alive), ``/readyz`` (ready), ``/metrics``.

* ``GET /healthz``: 200 ``{"status": "ok"}`` whenever the event loop answers at all.
* ``GET /readyz``: 200 when every readiness check is true, else 503; the body lists each check,
  e.g. ``{"broker_connected": true, "consuming": true, "api_token_accepted": false}``. A check
  callable that raises counts as not ready (503), never as a 500.
* ``GET /metrics``: the Prometheus text format 0.0.4 of the given ``CollectorRegistry``.

No access log is written: probes would flood it, and a query string can carry anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from service.metrics import CONTENT_TYPE

__all__ = ["HealthServer", "ReadinessChecks"]

ReadinessChecks = Callable[[], Mapping[str, bool]]
"""Returns each readiness check by name, e.g. ``{"broker_connected": True, ...}``."""

log = structlog.get_logger(__name__)

# Probes are tiny GETs: refuse bodies, keep slow clients from holding sockets.
_MAX_REQUEST_BODY: Final = 1024
_SHUTDOWN_TIMEOUT_S: Final = 5.0


class HealthServer:
    """An aiohttp server on ``host:port`` for liveness, readiness and metrics."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: CollectorRegistry,
        readiness: ReadinessChecks,
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_REQUEST_BODY)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        return app

    async def start(self) -> int:
        """Listen and return the bound port (the one chosen by the OS when ``port`` is 0)."""
        if self._runner is not None:
            raise RuntimeError("HealthServer is already started")
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,  # the service owns SIGTERM/SIGINT
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        log.info("http_listening", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close open connections; safe to call twice or before start."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        try:
            checks = {name: bool(ok) for name, ok in self._readiness().items()}
        except Exception as exc:
            # A broken check must read as "not ready", not crash the probe into a 500.
            log.warning("readiness_check_failed", error=repr(exc))
            return web.json_response({"readiness_check": False}, status=503)
        return web.json_response(checks, status=200 if all(checks.values()) else 503)

    async def _metrics_text(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._metrics),
            headers={"Content-Type": CONTENT_TYPE},
        )
