"""Async client of the DigitalOcean Databases API: calls, retries, rate limiting, typed errors.

Everything a caller needs is re-exported here::

    limiter = RateLimiter()                      # one per process, shared by every client
    async with DigitalOceanClient(url, token, limiter=limiter) as do:
        cluster = await do.create_cluster(request.cluster.api_body(managed_tag="provisioner"))

The names are loaded on first use: the domain imports the error types, and that must not load
aiohttp (``tests/unit/test_architecture.py`` checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.digitalocean.client import (
        DEFAULT_RETRY,
        TRANSPORT_ERROR,
        CallObserver,
        DigitalOceanClient,
        default_user_agent,
    )
    from service.digitalocean.errors import (
        AmbiguousCreate,
        ApiError,
        ClientError,
        Forbidden,
        NotFound,
        RateLimited,
        ResponseDecodeError,
        ServerError,
        TransportError,
        Unauthorized,
        Unprocessable,
        error_from_response,
    )
    from service.digitalocean.ratelimit import (
        RateLimiter,
        RateLimitHeaders,
        RateLimitState,
        RateLimitTimeout,
        parse_rate_limit_headers,
    )
    from service.digitalocean.retry import RetryPolicy
    from service.digitalocean.urls import check_base_url

_HOMES: dict[str, str] = {
    "DEFAULT_RETRY": "client",
    "TRANSPORT_ERROR": "client",
    "CallObserver": "client",
    "DigitalOceanClient": "client",
    "default_user_agent": "client",
    "AmbiguousCreate": "errors",
    "ApiError": "errors",
    "ClientError": "errors",
    "Forbidden": "errors",
    "NotFound": "errors",
    "RateLimited": "errors",
    "ResponseDecodeError": "errors",
    "ServerError": "errors",
    "TransportError": "errors",
    "Unauthorized": "errors",
    "Unprocessable": "errors",
    "error_from_response": "errors",
    "RateLimiter": "ratelimit",
    "RateLimitHeaders": "ratelimit",
    "RateLimitState": "ratelimit",
    "RateLimitTimeout": "ratelimit",
    "parse_rate_limit_headers": "ratelimit",
    "RetryPolicy": "retry",
    "check_base_url": "urls",
}

__all__ = [
    "DEFAULT_RETRY",
    "TRANSPORT_ERROR",
    "AmbiguousCreate",
    "ApiError",
    "CallObserver",
    "ClientError",
    "DigitalOceanClient",
    "Forbidden",
    "NotFound",
    "RateLimitHeaders",
    "RateLimitState",
    "RateLimitTimeout",
    "RateLimited",
    "RateLimiter",
    "ResponseDecodeError",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unprocessable",
    "check_base_url",
    "default_user_agent",
    "error_from_response",
    "parse_rate_limit_headers",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
