"""The checks on the URLs the client sends the token to: the API's base URL and the ids put
into a path."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlsplit

__all__ = ["check_base_url", "path_segment"]


def check_base_url(base_url: str) -> str:
    """``base_url`` without its trailing slash, or ``ValueError`` naming the rule it breaks.

    The token travels in every request, so it only goes over TLS, except to this machine
    (127.0.0.0/8, ::1, localhost), where the simulator serves plain HTTP.
    """
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("the DigitalOcean API URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ValueError("the DigitalOcean API URL must be an absolute http(s):// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the DigitalOcean API URL must not carry credentials; pass the token")
    if parts.query or parts.fragment:
        raise ValueError("the DigitalOcean API URL must not have a query or a fragment")
    if scheme == "http" and not _is_loopback(host):
        raise ValueError(
            "the DigitalOcean API URL must use https:// unless its host is loopback "
            f"(127.0.0.0/8, ::1, localhost); got http:// with host {host!r}"
        )
    return base_url.rstrip("/")


def path_segment(value: str) -> str:
    """``value`` (a cluster id, a user name) as one path segment: a ``/`` or ``..`` in it
    cannot reach another endpoint."""
    if not value:
        raise ValueError("a cluster id must not be empty")
    return quote(value, safe="")


def _is_loopback(host: str) -> bool:
    if host.rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
