"""Logging: what reaches the output is structured, carries the bound context, and holds no secret.

Most tests run :func:`configure_logging` for real and read the bytes it wrote, since that is
what an operator (and the chaos run's log scan) sees.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
import structlog
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from structlog.testing import capture_logs

from service import redaction
from service.observability import configure_logging
from service.redaction import (
    SecretRegistry,
    redact_secrets,
    register_secret,
)


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the next test.

    Each test also gets an empty process-wide registry, so what other tests registered
    (a broker password such as "guest") cannot change what this one sees.
    """
    monkeypatch.setattr(redaction, "secret_registry", SecretRegistry())
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    structlog_config = structlog.get_config()
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()


def fresh_secret(prefix: str = "") -> str:
    """A unique value, so tests never depend on what another test registered."""
    return prefix + secrets.token_urlsafe(18)


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, each parsed as one JSON object (fails if a line is not one)."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- the configured output ---------------------------------------------------------------


def test_json_lines_carry_bound_context_level_and_iso_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    structlog.contextvars.bind_contextvars(
        request_id="req-1", cluster_id="c-9", correlation_id="corr-7"
    )
    structlog.get_logger("service.test").info("cluster_online", attempt=2)
    (line,) = lines_of(stream)
    assert line["event"] == "cluster_online"
    assert line["attempt"] == 2
    assert line["level"] == "info"
    assert line["logger"] == "service.test"
    assert (line["request_id"], line["cluster_id"], line["correlation_id"]) == (
        "req-1",
        "c-9",
        "corr-7",
    )
    # ISO 8601 in UTC, e.g. 2024-05-01T12:00:00.123456Z
    assert line["timestamp"][10] == "T"
    assert line["timestamp"].endswith("Z")


def test_json_output_contains_no_secret_from_keys_values_urls_or_registered_values() -> None:
    token = fresh_secret("dop_v1_")
    password = fresh_secret()
    register_secret(token)
    register_secret(password)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = structlog.get_logger("service.test")
    log.info("starting", token=token, amqp_url="amqp://svc:hunter2pw@rabbit:5672/")
    log.info(f"free text mentions {password} inline", note=["nested", {"deep": password}])
    log.warning("api answered", body={"users": [{"name": "u", "password": password}]})

    output = stream.getvalue()
    assert len(lines_of(stream)) == 3
    for leaked in (token, password, "hunter2pw"):
        assert leaked not in output
    assert "amqp://svc:***@rabbit:5672/" in output


def test_exception_traceback_is_rendered_and_scrubbed() -> None:
    password = fresh_secret()
    register_secret(password)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = structlog.get_logger("service.test")
    try:
        raise RuntimeError(f"login failed for postgresql://doadmin:{password}@db:25060/x")
    except RuntimeError:
        log.exception("finish_failed")
    (line,) = lines_of(stream)
    assert password not in stream.getvalue()
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: login failed for postgresql://doadmin:***@db:25060/x" in line["exception"]


def test_stdlib_library_logs_go_through_the_same_chain_and_redaction() -> None:
    password = fresh_secret()
    register_secret(password)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    structlog.contextvars.bind_contextvars(request_id="req-42")
    logging.getLogger("aio_pika.robust_connection").warning(
        "Connection attempt to %s failed", "amqp://guest:guestpw@127.0.0.1:5672/"
    )
    try:
        raise ConnectionError(f"server said {password}")
    except ConnectionError:
        logging.getLogger("aiormq.connection").exception("Unexpected connection close")

    first, second = lines_of(stream)
    assert first["event"] == "Connection attempt to amqp://guest:***@127.0.0.1:5672/ failed"
    assert first["logger"] == "aio_pika.robust_connection"
    assert first["level"] == "warning"
    assert first["request_id"] == "req-42"
    assert "timestamp" in first
    assert second["level"] == "error"
    assert "ConnectionError: server said ***" in second["exception"]
    assert password not in stream.getvalue()
    assert "guestpw" not in stream.getvalue()


def test_configuring_twice_writes_each_line_once_to_the_latest_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first)
    configure_logging("json", stream=second)
    structlog.get_logger("service.test").info("once")
    logging.getLogger("aiohttp.client").info("once too")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines_of(second)] == ["once", "once too"]


def test_level_filters_structlog_and_stdlib_lines() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    structlog.get_logger("service.test").info("dropped")
    logging.getLogger("aio_pika").info("dropped too")
    structlog.get_logger("service.test").warning("kept")
    assert [line["event"] for line in lines_of(stream)] == ["kept"]


def test_console_format_is_readable_text_and_redacted() -> None:
    password = fresh_secret()
    register_secret(password)
    stream = io.StringIO()
    configure_logging("console", stream=stream)
    structlog.contextvars.bind_contextvars(request_id="req-5")
    structlog.get_logger("service.test").info("cluster_online", note=f"pw {password}")
    output = stream.getvalue()
    assert "cluster_online" in output
    assert "request_id=req-5" in output
    assert password not in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_bad_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", stream=io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "LOUD", stream=io.StringIO())


def test_capture_logs_with_the_redaction_processor_sees_redacted_events() -> None:
    password = fresh_secret()
    register_secret(password)
    configure_logging("json", stream=io.StringIO())
    with capture_logs(processors=[redact_secrets]) as captured:
        structlog.get_logger("service.test").info("user_created", detail=f"pw={password}")
    assert captured == [{"event": "user_created", "detail": "pw=***", "log_level": "info"}]


def test_a_line_that_cannot_be_written_never_fails_the_caller() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    stream.close()
    structlog.get_logger("service.test").info("lost")  # no exception, as with logging
    logging.getLogger("aiohttp.client").info("lost too")


def test_library_frames_are_logged_without_their_bodies_at_any_level() -> None:
    # aiormq logs each frame it sends and receives at DEBUG: a connection_ready body is one.
    body = b'{"data": {"users": [{"name": "app", "password": "' + b"q" * 20 + b'"}]}}'
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    logging.getLogger("aiormq.connection").debug(
        "Prepare to send %r", ChannelFrame(payload=b"\x03\x00\x01" + body, should_close=False)
    )
    logging.getLogger("aiormq.connection").debug(
        "Received frame %r in channel #%d", ContentBody(body), 1
    )
    logging.getLogger("aiormq.channel").error("Got frame for closed channel %d: %r", 1, body)
    logging.getLogger("aio_pika.queue").warning("returned %r", aio_pika.Message(body))
    text = stream.getvalue()
    assert len(lines_of(stream)) == 4
    assert "q" * 20 not in text
    assert "password" not in text
    assert f"<ContentBody of {len(body)} bytes>" in text
    assert f"<{len(body)} bytes>" in text
