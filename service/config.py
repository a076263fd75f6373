"""Settings from the environment, decoded by msgspec: one typed value, checked at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import unquote, urlsplit

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

from service.digitalocean.urls import check_base_url

__all__ = ["ENVIRONMENT", "ConfigError", "Settings", "load_settings"]

PositiveFloat = Annotated[float, Meta(gt=0)]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable, never its value."""


DEFAULT_COMMAND_PREFETCH: Final = 64
"""Commands one replica holds at once. Enough that when the rate limit's window frees a
burst of slots, creates are in hand to take them (with 16, a backlog of 1,000 took 1.4 times
the rate limit's bound: finishing calls took the slots); at most this many times
``max_message_bytes`` of command bodies are held."""


class Settings(Struct, kw_only=True, frozen=True):
    """Everything the service reads from its environment (see ENVIRONMENT for the names)."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    token: str = msgspec.field(default="")
    api_url: str = "https://api.digitalocean.com"
    poll_interval_s: PositiveFloat = 10.0
    create_timeout_s: PositiveFloat = 1800.0
    http_host: str = "0.0.0.0"  # noqa: S104 - health and metrics are scraped from outside
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    managed_tag: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_:\-]{1,64}$")] = "provisioner"
    event_source: str = "/provisioner"
    event_secrets: Literal["include", "omit", "sealed"] = "include"
    policy_file: str = ""
    poll_mode: Literal["list", "per-cluster"] = "list"
    command_prefetch: Annotated[int, Meta(ge=1, le=1000)] = DEFAULT_COMMAND_PREFETCH
    watch_prefetch: Annotated[int, Meta(ge=1, le=10000)] = 500
    retry_delays_s: tuple[PositiveFloat, ...] = (2.0, 10.0, 30.0, 60.0, 120.0)
    not_found_grace_s: Annotated[float, Meta(ge=0)] = 60.0
    options_ttl_s: PositiveFloat = 300.0
    max_message_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 20.0
    publish_timeout_s: PositiveFloat = 10.0
    rate_limit_per_minute: Annotated[int, Meta(ge=1)] = 250
    rate_limit_per_hour: Annotated[int, Meta(ge=1)] = 5000
    rate_limit_minute_window_s: PositiveFloat = 60.0
    rate_limit_hour_window_s: PositiveFloat = 3600.0
    finish_max_attempts: Annotated[int, Meta(ge=1)] = 10
    finish_budget_s: PositiveFloat = 30.0
    amqp_url_order: Literal["shuffle", "listed"] = "shuffle"
    quorum_group_size: Annotated[int, Meta(ge=1, le=99)] = 3

    @property
    def amqp_urls(self) -> list[str]:
        """Every broker address of ``amqp_url`` (a comma-separated list of a cluster's
        nodes, or one address)."""
        return [part.strip() for part in self.amqp_url.split(",") if part.strip()]

    @property
    def amqp_user(self) -> str:
        """The RabbitMQ user the service connects as (aio-pika's default: guest): the
        ``user_id`` of everything it publishes."""
        user = urlsplit(self.amqp_urls[0]).username
        return unquote(user) if user else "guest"

    @property
    def max_command_attempts(self) -> int:
        """The first try plus one retry per configured delay."""
        return len(self.retry_delays_s) + 1

    def __repr__(self) -> str:
        # The token and the broker password must never reach a log line or a traceback.
        return f"Settings(api_url={self.api_url!r}, managed_tag={self.managed_tag!r}, ...)"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # rich (the demo's console, tracebacks with locals) uses this, not __repr__.
        return [
            ("api_url", self.api_url),
            ("managed_tag", self.managed_tag),
            ("poll_interval_s", self.poll_interval_s),
        ]


# Environment variable -> Settings field. The README's configuration table lists these.
ENVIRONMENT: Final[Mapping[str, str]] = {
    "PROVISIONER_AMQP_URL": "amqp_url",
    "DIGITALOCEAN_API_URL": "api_url",
    "PROVISIONER_POLL_INTERVAL_S": "poll_interval_s",
    "PROVISIONER_CREATE_TIMEOUT_S": "create_timeout_s",
    "PROVISIONER_HTTP_HOST": "http_host",
    "PROVISIONER_HTTP_PORT": "http_port",
    "PROVISIONER_LOG_FORMAT": "log_format",
    "PROVISIONER_LOG_LEVEL": "log_level",
    "PROVISIONER_MANAGED_TAG": "managed_tag",
    "PROVISIONER_EVENT_SOURCE": "event_source",
    "PROVISIONER_EVENT_SECRETS": "event_secrets",
    "PROVISIONER_POLICY_FILE": "policy_file",
    "PROVISIONER_POLL_MODE": "poll_mode",
    "PROVISIONER_COMMAND_PREFETCH": "command_prefetch",
    "PROVISIONER_WATCH_PREFETCH": "watch_prefetch",
    "PROVISIONER_RETRY_DELAYS_S": "retry_delays_s",
    "PROVISIONER_NOT_FOUND_GRACE_S": "not_found_grace_s",
    "PROVISIONER_OPTIONS_TTL_S": "options_ttl_s",
    "PROVISIONER_MAX_MESSAGE_BYTES": "max_message_bytes",
    "PROVISIONER_SHUTDOWN_GRACE_S": "shutdown_grace_s",
    "PROVISIONER_PUBLISH_TIMEOUT_S": "publish_timeout_s",
    "PROVISIONER_RATE_LIMIT_PER_MINUTE": "rate_limit_per_minute",
    "PROVISIONER_RATE_LIMIT_PER_HOUR": "rate_limit_per_hour",
    "PROVISIONER_RATE_LIMIT_MINUTE_WINDOW_S": "rate_limit_minute_window_s",
    "PROVISIONER_RATE_LIMIT_HOUR_WINDOW_S": "rate_limit_hour_window_s",
    "PROVISIONER_FINISH_MAX_ATTEMPTS": "finish_max_attempts",
    "PROVISIONER_FINISH_BUDGET_S": "finish_budget_s",
    "PROVISIONER_AMQP_URL_ORDER": "amqp_url_order",
    "PROVISIONER_QUORUM_GROUP_SIZE": "quorum_group_size",
}
TOKEN_VARIABLES: Final = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
TOKEN_FILE_VARIABLE: Final = "DIGITALOCEAN_TOKEN_FILE"  # noqa: S105 - a variable name


def read_token(env: Mapping[str, str]) -> str:
    """The API token from the environment or from the file it names; never from argv."""
    for name in TOKEN_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return value
    path = env.get(TOKEN_FILE_VARIABLE, "").strip()
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{TOKEN_FILE_VARIABLE}: cannot read {path}: {exc.strerror}"
            ) from None
    return ""


def load_settings(env: Mapping[str, str] | None = None, *, require_token: bool = True) -> Settings:
    """Decode the settings; ``ConfigError`` names the variable and the rule it breaks."""
    env = os.environ if env is None else env
    raw: dict[str, object] = {}
    for variable, field in ENVIRONMENT.items():
        value = env.get(variable)
        if value is None or value == "":
            continue
        if field == "retry_delays_s":
            raw[field] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            raw[field] = value
    raw["token"] = read_token(env)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_variable(str(exc))) from None
    try:
        check_base_url(settings.api_url)
    except ValueError as exc:
        raise ConfigError(f"`DIGITALOCEAN_API_URL`: {exc}") from None
    _check_amqp_urls(settings.amqp_url)
    if require_token and not settings.token:
        raise ConfigError(
            f"no DigitalOcean token: set {TOKEN_VARIABLES[0]} (or {TOKEN_VARIABLES[1]}, "
            f"or {TOKEN_FILE_VARIABLE} to a file holding it)"
        )
    return settings


def _check_amqp_urls(value: str) -> None:
    # Never quote a URL: it usually carries the broker password. Name its position instead.
    urls = [part.strip() for part in value.split(",")]
    users = set()
    for position, url in enumerate(urls, start=1):
        which = f" (address {position} of {len(urls)})" if len(urls) > 1 else ""
        if not url:
            raise ConfigError(f"`PROVISIONER_AMQP_URL`: empty address{which}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ConfigError(f"`PROVISIONER_AMQP_URL`: not a valid URL{which}") from None
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ConfigError(
                f"`PROVISIONER_AMQP_URL`: must be amqp://user:password@host:port/vhost "
                f"(or amqps:// for TLS), comma-separated for a cluster's nodes{which}"
            )
        users.add(unquote(parts.username) if parts.username else "guest")
    if len(users) > 1:
        # The service stamps its user on everything it publishes (user_id) and trusts its own
        # watches by it: every node must be reached as the same user.
        raise ConfigError("`PROVISIONER_AMQP_URL`: every address must name the same user")


def _name_variable(message: str) -> str:
    # msgspec says "Invalid enum value 'x' - at `$.log_format`": name the variable the
    # operator sets, and never repeat the value (it could be a token pasted in the wrong
    # place).
    message = re.sub(r"Invalid enum value '[^']*'", "Invalid enum value", message)
    # Longest first: `$.amqp_url_order` also starts with `$.amqp_url`.
    for variable, field in sorted(ENVIRONMENT.items(), key=lambda item: -len(item[1])):
        if f"`$.{field}" in message:
            message = message.replace(f"`$.{field}", f"`{variable}").replace(" - at ", ": at ")
            allowed = _literal_values(field)
            return f"{message} (one of: {', '.join(allowed)})" if allowed else message
    return message


def _literal_values(field: str) -> list[str]:
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        if f.name == field and isinstance(f.type, msgspec.inspect.LiteralType):
            return [str(v) for v in f.type.values]
    return []
