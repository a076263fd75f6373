"""The error a simulated endpoint raises; the server turns it into DigitalOcean's error body."""

from __future__ import annotations

__all__ = ["ApiError", "not_found", "unprocessable"]


class ApiError(Exception):
    """An API error answer: HTTP status, DigitalOcean's short ``id`` and a message."""

    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(f"{status} {error_id}: {message}")
        self.status = status
        self.error_id = error_id
        self.message = message


def not_found(what: str = "cluster") -> ApiError:
    """404 ``not_found``, worded as DigitalOcean does (``cluster not found``)."""
    return ApiError(404, "not_found", f"{what} not found")


def unprocessable(message: str) -> ApiError:
    """422 ``unprocessable_entity``: the request is well-formed but cannot be carried out."""
    return ApiError(422, "unprocessable_entity", message)
