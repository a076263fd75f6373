"""The client's rules that need no network: the URL rule, the token, the User-Agent, the
public surface, and how an answer becomes a typed error without leaking a secret."""

from __future__ import annotations

import pickle

import aiohttp
import pytest

import service
import service.digitalocean as do
from service.digitalocean import (
    AmbiguousCreate,
    ApiError,
    ClientError,
    DigitalOceanClient,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unprocessable,
    check_base_url,
    default_user_agent,
    error_from_response,
)

TOKEN = "dop_v1_" + "ab12" * 16


def test_public_names_are_exactly_the_documented_surface() -> None:
    assert set(do.__all__) == {
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
    }
    for name in do.__all__:
        assert getattr(do, name) is not None


# --- the URL rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.digitalocean.com",
        "https://api.digitalocean.com/",
        "http://127.0.0.1:8089",
        "http://127.200.3.4:1/",
        "http://[::1]:8089",
        "http://localhost:8089",
        "HTTP://LOCALHOST",
        "https://10.0.0.5:8443/prefix",
    ],
)
def test_https_anywhere_and_http_only_on_loopback_are_accepted(url: str) -> None:
    assert check_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.digitalocean.com",
        "http://10.0.0.5:8089",
        "http://128.0.0.1",
        "http://[::2]",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://0.0.0.0:8089",
    ],
)
def test_plain_http_to_a_host_that_is_not_loopback_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"must use https:// unless its host is loopback"):
        DigitalOceanClient(url, TOKEN)


@pytest.mark.parametrize(
    "url",
    [
        "api.digitalocean.com",
        "ftp://127.0.0.1",
        "https://",
        "https://user:secret@api.digitalocean.com",
        "https://api.digitalocean.com/?token=x",
        "https://api.digitalocean.com:port",
    ],
)
def test_urls_that_are_not_a_plain_api_root_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="DigitalOcean API URL") as caught:
        check_base_url(url)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("token", ["", "has space", "line\nbreak", f"{TOKEN}\r\nX-Evil: 1"])
def test_tokens_that_would_break_the_header_are_refused_without_being_echoed(token: str) -> None:
    with pytest.raises(ValueError, match="token must be a non-empty string") as caught:
        DigitalOceanClient("https://api.digitalocean.com", token)
    assert TOKEN not in str(caught.value)


def test_url_error_never_echoes_the_token() -> None:
    with pytest.raises(ValueError) as caught:
        DigitalOceanClient("http://api.digitalocean.com", TOKEN)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)


def test_client_repr_shows_the_url_and_not_the_token() -> None:
    client = DigitalOceanClient("http://127.0.0.1:1", TOKEN)
    assert repr(client) == "DigitalOceanClient(base_url='http://127.0.0.1:1')"


def test_user_agent_names_the_project_its_version_and_aiohttp() -> None:
    agent = default_user_agent()
    assert agent == f"do-db-provisioner/{service.__version__} aiohttp/{aiohttp.__version__}"
    assert DigitalOceanClient("http://127.0.0.1:1", TOKEN).user_agent == agent
    custom = DigitalOceanClient("http://127.0.0.1:1", TOKEN, user_agent="bench/1")
    assert custom.user_agent == "bench/1"


async def test_a_closed_client_refuses_calls() -> None:
    client = DigitalOceanClient("http://127.0.0.1:1", TOKEN)
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_options()


async def test_an_empty_cluster_id_is_refused_before_any_request() -> None:
    async with DigitalOceanClient("http://127.0.0.1:1", TOKEN) as client:
        with pytest.raises(ValueError, match="cluster id"):
            await client.get_cluster("")
        assert client.limiter.snapshot().sent_last_minute == 0


# --- errors ---------------------------------------------------------------------------------


def body(error_id: str, message: str, request_id: str | None = None) -> bytes:
    extra = f', "request_id": "{request_id}"' if request_id else ""
    return f'{{"id": "{error_id}", "message": "{message}"{extra}}}'.encode()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ClientError),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, ClientError),
        (422, Unprocessable),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
        (302, ApiError),
    ],
)
def test_each_status_becomes_its_error_type(status: int, kind: type[ApiError]) -> None:
    error = error_from_response(
        "get_cluster", status, body("some_id", "Some message."), {}, retry_after_s=2.0
    )
    assert type(error) is kind
    assert (error.status, error.id, error.message, error.operation) == (
        status,
        "some_id",
        "Some message.",
        "get_cluster",
    )


def test_client_errors_share_a_base_and_429_is_not_one_of_them() -> None:
    client_errors: list[type[ApiError]] = [Unauthorized, Forbidden, NotFound, Unprocessable]
    others: list[type[ApiError]] = [RateLimited, ServerError, TransportError, AmbiguousCreate]
    for kind in client_errors:
        assert issubclass(kind, ClientError)
    for kind in others:
        assert not issubclass(kind, ClientError)
        assert issubclass(kind, ApiError)


def test_429_carries_its_wait() -> None:
    error = error_from_response(
        "list_clusters",
        429,
        body("too_many_requests", "API Rate limit exceeded."),
        {},
        retry_after_s=29.0,
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 29.0
    assert "retry after 29 s" in str(error)


def test_error_text_names_operation_status_id_message_and_request_id() -> None:
    error = error_from_response(
        "create_cluster",
        422,
        body("unprocessable_entity", "name is already taken", "4d9d8375-3c56"),
        {"x-request-id": "from-header"},
        retry_after_s=1.0,
    )
    assert str(error) == (
        "create_cluster: HTTP 422: unprocessable_entity: name is already taken "
        "(request_id 4d9d8375-3c56)"
    )
    assert repr(error) == (
        "Unprocessable(operation='create_cluster', status=422, id='unprocessable_entity', "
        "message='name is already taken', request_id='4d9d8375-3c56')"
    )


def test_request_id_falls_back_to_the_x_request_id_header() -> None:
    error = error_from_response(
        "get_ca", 404, body("not_found", "nope"), {"x-request-id": "515850a0"}, retry_after_s=1.0
    )
    assert error.request_id == "515850a0"


@pytest.mark.parametrize(
    ("raw", "expected_id", "expected_message"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", None, "Bad Gateway"),
        (b"", None, "Bad Gateway"),
        (b'{"message": "upstream down"}', None, "upstream down"),
        (b'{"id": 7, "message": ["x"]}', None, "Bad Gateway"),
        (b"[1, 2, 3]", None, "Bad Gateway"),
    ],
)
def test_error_bodies_that_are_not_the_spec_shape_still_give_a_typed_error(
    raw: bytes, expected_id: str | None, expected_message: str
) -> None:
    error = error_from_response("get_cluster", 502, raw, {}, retry_after_s=1.0)
    assert isinstance(error, ServerError)
    assert (error.id, error.message) == (expected_id, expected_message)


def test_overlong_messages_are_cut() -> None:
    error = error_from_response("get_cluster", 500, body("x", "m" * 5000), {}, retry_after_s=1.0)
    assert len(error.message) == 500


def test_a_message_that_echoes_the_token_is_scrubbed() -> None:
    error = error_from_response(
        "get_cluster",
        401,
        body("unauthorized", f"token {TOKEN} is revoked"),
        {},
        retry_after_s=1.0,
        secret=TOKEN,
    )
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert error.message == "token *** is revoked"


def test_errors_survive_pickling_with_their_fields() -> None:
    original = AmbiguousCreate(
        operation="create_cluster", message="lost", cluster_name="orders", status=None
    )
    copy = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own object
    assert type(copy) is AmbiguousCreate
    assert (copy.cluster_name, copy.message, str(copy)) == ("orders", "lost", str(original))
