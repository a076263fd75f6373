"""Typed errors of the DigitalOcean client: what went wrong, with what a user needs to act.

Every error carries the HTTP ``status`` (``None`` when no response came back), DigitalOcean's
``id``, ``message`` and ``request_id``, and the client ``operation`` that failed. The service
decides on the type: retry later (``RateLimited``, ``ServerError``, ``TransportError``), look
the cluster up (``AmbiguousCreate``), or fail the request (the other ``ClientError``s)::

    ApiError
    ├── ClientError            a 4xx other than 429: fail the request
    │   ├── Unauthorized       401: the service's token, not the request
    │   ├── Forbidden          403
    │   ├── NotFound           404
    │   └── Unprocessable      422
    ├── RateLimited            429, or no slot in the process's own budget: retry later
    ├── ServerError            5xx: retry later
    ├── TransportError         no answer: retry later (``maybe_sent`` says if it left)
    ├── AmbiguousCreate        a create that may have happened: look the cluster up
    └── ResponseDecodeError    an answer that does not decode

Nothing here ever holds the API token or a body: the message is DigitalOcean's own text (which
carries no secrets) or a description written by the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar, Final

import msgspec

from contracts.digitalocean import ApiErrorBody

__all__ = [
    "AmbiguousCreate",
    "ApiError",
    "ClientError",
    "Forbidden",
    "NotFound",
    "RateLimited",
    "ResponseDecodeError",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unprocessable",
    "error_from_response",
]

# DigitalOcean's messages are short; a proxy's error page is not, and is not ours to show.
MAX_MESSAGE_CHARS: Final = 500

_ERROR_BODY: Final = msgspec.json.Decoder(ApiErrorBody)


class ApiError(Exception):
    """A DigitalOcean API call failed; the base of every error the client raises."""

    #: Field names shown by ``repr`` (subclasses add their own).
    _repr_fields: ClassVar[tuple[str, ...]] = ("operation", "status", "id", "message", "request_id")

    def __init__(
        self,
        *,
        operation: str,
        message: str,
        status: int | None = None,
        id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.id = id
        self.message = message
        self.request_id = request_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        what = f"{self.id}: {self.message}" if self.id else self.message
        rid = f" (request_id {self.request_id})" if self.request_id else ""
        return f"{self.operation}: {where}: {what}{rid}"

    def __str__(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions pickle through their args; ours are keyword-only, so rebuild from fields.
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type[ApiError], state: dict[str, object]) -> ApiError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._describe())
    return error


class ClientError(ApiError):
    """A 4xx other than 429: the request itself is wrong and sending it again will not help."""


class Unauthorized(ClientError):
    """401: the token is missing, wrong or revoked; the service is misconfigured."""


class Forbidden(ClientError):
    """403: the token lacks the scope this call needs."""


class NotFound(ClientError):
    """404: no such cluster (a fresh cluster may also 404 for a moment after its create)."""


class Unprocessable(ClientError):
    """422: DigitalOcean refused the body (a taken name, an unknown size or region...)."""


class RateLimited(ApiError):
    """429, or the process's own budget has no slot soon enough; ``retry_after_s`` says when.

    A 429 means the request was refused, so it is always safe to send again later. ``status``
    is ``None`` when the local limiter refused before anything was sent.
    """

    _repr_fields = (*ApiError._repr_fields, "retry_after_s")

    def __init__(
        self,
        *,
        operation: str,
        message: str,
        retry_after_s: float,
        status: int | None = 429,
        id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            operation=operation, message=message, status=status, id=id, request_id=request_id
        )

    def _describe(self) -> str:
        return f"{super()._describe()}; retry after {self.retry_after_s:.3g} s"


class ServerError(ApiError):
    """5xx: DigitalOcean failed; a GET is retried, a POST is not replayed blindly."""


class TransportError(ApiError):
    """No HTTP response: timeout, refused or reset connection, DNS failure.

    ``maybe_sent`` is ``False`` only when the connection was never established, so the
    request cannot have reached DigitalOcean.
    """

    _repr_fields = (*ApiError._repr_fields, "maybe_sent")

    def __init__(self, *, operation: str, message: str, maybe_sent: bool) -> None:
        self.maybe_sent = maybe_sent
        super().__init__(operation=operation, message=message)


class AmbiguousCreate(ApiError):
    """The create POST may or may not have created the cluster ``cluster_name``.

    Raised on a timeout or dropped connection after the request was sent, and on a 5xx: in
    both cases DigitalOcean may have created the cluster before the answer was lost or the
    error was produced. The client never replays the create by itself: a replay could create
    a second, billed cluster, or get a 422 "name already taken" for the cluster the first
    attempt made, which reads like a user error. The caller looks the cluster up by name (and
    its managed tag) and adopts it, or creates again once it is sure none exists.
    ``status`` is the 5xx status, or ``None`` when no response came back.
    """

    _repr_fields = (*ApiError._repr_fields, "cluster_name")

    def __init__(
        self,
        *,
        operation: str,
        message: str,
        cluster_name: str,
        status: int | None = None,
        id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.cluster_name = cluster_name
        super().__init__(
            operation=operation, message=message, status=status, id=id, request_id=request_id
        )

    def _describe(self) -> str:
        return f"{super()._describe()}; cluster {self.cluster_name!r} may have been created"


class ResponseDecodeError(ApiError):
    """A 2xx response whose body does not decode into the expected type.

    The message names the type and msgspec's path, never the body (it may hold passwords).
    """


_ERROR_BY_STATUS: Final[dict[int, type[ClientError]]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    422: Unprocessable,
}


def error_from_response(
    operation: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    retry_after_s: float,
    secret: str | None = None,
) -> ApiError:
    """The typed error for a non-2xx answer.

    ``retry_after_s`` is a 429's wait. ``secret`` (the token) is replaced by ``***`` should
    the message ever contain it. ``x-request-id`` stands in when the body has no request id.
    """
    error_id, message, request_id = _read_error_body(body)
    if not message:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = "unexpected response"
    message = message[:MAX_MESSAGE_CHARS]
    if secret:
        message = message.replace(secret, "***")
    fields: dict[str, Any] = {
        "operation": operation,
        "status": status,
        "id": error_id,
        "message": message,
        "request_id": request_id or _header(headers, "x-request-id"),
    }
    if status == 429:
        return RateLimited(retry_after_s=retry_after_s, **fields)
    if status in _ERROR_BY_STATUS:
        return _ERROR_BY_STATUS[status](**fields)
    if 400 <= status < 500:
        return ClientError(**fields)
    if status >= 500:
        return ServerError(**fields)
    return ApiError(**fields)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value or None


def _read_error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """DigitalOcean's ``id``, ``message`` and ``request_id`` from an error body, leniently:
    a body that is not the spec's shape, or not JSON at all, still gives an error."""
    try:
        parsed = _ERROR_BODY.decode(body)
    except msgspec.DecodeError:
        pass
    else:
        return parsed.id or None, parsed.message or None, parsed.request_id or None
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None, None, None
    if not isinstance(raw, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and value else None

    return text("id"), text("message"), text("request_id")
