"""Async client of the DigitalOcean Databases API: calls, retries, rate limiting, typed errors.

Everything a caller needs is re-exported here::

    limiter = RateLimiter()                      # one per process, shared by every client
    async with DigitalOceanClient(url, token, limiter=limiter) as do:
        cluster = await do.create_cluster(request.cluster.api_body(managed_tag="provisioner"))
"""

from __future__ import annotations

from service.digitalocean.client import (
    DEFAULT_RETRY,
    TRANSPORT_ERROR,
    CallObserver,
    DigitalOceanClient,
    check_base_url,
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
