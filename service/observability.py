"""Logging set-up: structlog for our code and the libraries', with secrets scrubbed from every line.

Every line, whether it comes from ``structlog.get_logger()`` or from a stdlib logger
(``aio_pika``, ``aiormq``, ``aiohttp``), gets the same steps: context variables
(``request_id``, ``cluster_id``, ``correlation_id``), ISO timestamp, level, logger name,
exception text, then ``redact_secrets`` (``service/redaction.py``), then the JSON (or console)
renderer. Redaction runs after exceptions are formatted, so a password quoted in a traceback
is scrubbed too. Our own lines take those steps in structlog and are written straight to the
stream (under the stdlib handler's lock), which is cheaper than a ``LogRecord`` and a
formatter per line; only the libraries' lines travel through ``logging``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.typing import Processor

from service.redaction import redact_secrets
from service.tracing import add_trace_ids

__all__ = ["LibraryBodyFilter", "configure_logging"]

LogFormat = Literal["json", "console"]


# Loggers of libraries that see message bodies: aiormq logs every frame it sends and receives
# at DEBUG (a connection_ready body, passwords included), and a few frames above DEBUG.
_LIBRARY_LOGGERS: Final = frozenset({"aiormq", "aio_pika", "aiohttp", "pamqp"})


def _without_body(value: Any) -> Any:
    """``value``, or a stand-in naming its kind and size where it holds a message body."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple):
        return type(value)(_without_body(item) for item in value)
    for attribute in ("body", "payload", "value"):
        # pamqp's ContentBody (value), aiormq's ChannelFrame (payload) and DeliveredMessage,
        # aio-pika's messages (body): the kind and the size are all a log line needs.
        held = getattr(value, attribute, None) if not isinstance(value, str) else None
        if isinstance(held, bytes | bytearray | memoryview):
            return f"<{type(value).__name__} of {len(held)} bytes>"
    return value


class LibraryBodyFilter(logging.Filter):
    """Replaces every message body a library puts in a log record by its size, whatever the
    level: redaction only scrubs what it recognises, and a body can hold anything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in _LIBRARY_LOGGERS:
            return True
        if isinstance(record.args, Mapping):
            record.args = {k: _without_body(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_without_body(arg) for arg in record.args)
        if not isinstance(record.msg, str):
            record.msg = _without_body(record.msg)
        return True


# The handler this module installed on the root logger, so a second call replaces it.
_HANDLER_MARK: Final = "_provisioner_handler"


def _shared_processors() -> list[Processor]:
    """What every line gets, whether structlog or a stdlib logger emitted it."""
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


class _LineWriter:
    """The end of the chain of our own loggers: the rendered line to the stream of the
    handler ``configure_logging`` installed, under that handler's lock, so that it never
    interleaves with a library's line. Like a logging handler, it never raises."""

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self.name = name  # read by add_logger_name
        self._handler = handler

    def msg(self, message: str) -> None:
        """Write one line."""
        handler = self._handler
        try:
            with handler.lock or contextlib.nullcontext():
                handler.stream.write(message + "\n")
                handler.stream.flush()
        except Exception:  # a closed or broken stream: the line is lost, the caller is not
            if logging.raiseExceptions and sys.__stderr__ is not None:
                with contextlib.suppress(Exception):
                    sys.__stderr__.write("logging: a line could not be written\n")

    debug = info = warning = warn = error = critical = fatal = exception = msg


class _LineWriterFactory:
    """structlog's logger factory: a ``_LineWriter`` named as ``get_logger(name)`` asked."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> _LineWriter:
        return _LineWriter(self._handler, str(args[0]) if args else "root")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def configure_logging(
    fmt: LogFormat = "json",
    level: str = "INFO",
    *,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging through one redacting chain to ``stream``.

    ``fmt`` picks one JSON object per line (``json``, the default, for machines) or
    human-readable lines (``console``). ``stream`` defaults to the current ``sys.stderr``, so
    that commands which print results on stdout stay parseable. Safe to call again: the handler
    from an earlier call is replaced, never added twice.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {fmt!r}")
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")
    out = stream if stream is not None else sys.stderr

    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=_is_terminal(out))
    )
    finishing: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        # Exceptions become text before redaction, so the traceback is scrubbed too.
        structlog.processors.format_exc_info,
        redact_secrets,
        renderer,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finishing],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(LibraryBodyFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    structlog.configure(
        processors=[*_shared_processors(), *finishing],
        logger_factory=_LineWriterFactory(handler),
        # Lines below the level cost a method call that returns at once.
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Not cached: a later configure_logging (or capture_logs in a test) must reach
        # loggers that modules created at import time.
        cache_logger_on_first_use=False,
    )
