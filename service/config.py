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

from service.digitalocean.client import check_base_url

__all__ = ["ENVIRONMENT", "ConfigError", "Settings", "load_settings"]

PositiveFloat = Annotated[float, Meta(gt=0)]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable, never its value."""


def env(variable: str, doc: str, **rules: Any) -> Meta:
    """A setting's environment variable and meaning, with the rules its value must meet
    (msgspec's constraints: ``gt``, ``ge``, ``le``, ``pattern``)."""
    return Meta(description=doc, extra={"env": variable}, **rules)


DEFAULT_COMMAND_PREFETCH: Final = 64


class Settings(Struct, kw_only=True, frozen=True):
    """Everything the service reads from its environment: one field per setting, with its
    variable, its default and its rules. The token is read apart (``read_token``)."""

    amqp_url: Annotated[
        str, env("PROVISIONER_AMQP_URL", "the broker, or a comma-separated list of its nodes")
    ] = "amqp://guest:guest@127.0.0.1:5672/"
    token: str = ""  # read apart: from one of TOKEN_VARIABLES or the file TOKEN_FILE_VARIABLE names
    api_url: Annotated[
        str, env("DIGITALOCEAN_API_URL", "the API; http:// only for loopback hosts")
    ] = "https://api.digitalocean.com"
    poll_interval_s: Annotated[
        float, env("PROVISIONER_POLL_INTERVAL_S", "how often a creating cluster is looked at", gt=0)
    ] = 10.0
    create_timeout_s: Annotated[
        float,
        env("PROVISIONER_CREATE_TIMEOUT_S", "deadline for online without timeout_s", gt=0),
    ] = 1800.0
    http_host: Annotated[
        str, env("PROVISIONER_HTTP_HOST", "address of /healthz, /readyz, /metrics")
    ] = "0.0.0.0"  # noqa: S104 - health and metrics are scraped from outside
    http_port: Annotated[
        int, env("PROVISIONER_HTTP_PORT", "their port (0: any free port)", ge=0, le=65535)
    ] = 8080
    log_format: Annotated[
        Literal["json", "console"], env("PROVISIONER_LOG_FORMAT", "JSON lines or for a person")
    ] = "json"
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"],
        env("PROVISIONER_LOG_LEVEL", "the least level logged"),
    ] = "INFO"
    managed_tag: Annotated[
        str,
        env(
            "PROVISIONER_MANAGED_TAG",
            "tag added to every cluster the service creates",
            pattern=r"^[A-Za-z0-9_:\-]{1,64}$",
        ),
    ] = "provisioner"
    event_source: Annotated[str, env("PROVISIONER_EVENT_SOURCE", "the CloudEvents source")] = (
        "/provisioner"
    )
    event_secrets: Annotated[
        Literal["include", "omit", "sealed"],
        env("PROVISIONER_EVENT_SECRETS", "what connection_ready carries of the credentials"),
    ] = "include"
    policy_file: Annotated[
        str, env("PROVISIONER_POLICY_FILE", "TOML: what each producer may ask for")
    ] = ""
    poll_mode: Annotated[
        Literal["list", "per-cluster"],
        env("PROVISIONER_POLL_MODE", "one list call for many watches, or one GET per cluster"),
    ] = "list"
    command_prefetch: Annotated[
        int,
        env(
            "PROVISIONER_COMMAND_PREFETCH",
            "commands handled at once per replica: enough to have creates in hand when the "
            "rate limit frees slots; bounds memory with max_message_bytes",
            ge=1,
            le=1000,
        ),
    ] = DEFAULT_COMMAND_PREFETCH
    watch_prefetch: Annotated[
        int,
        env(
            "PROVISIONER_WATCH_PREFETCH",
            "watches taken at once (the largest batch)",
            ge=1,
            le=10000,
        ),
    ] = 500
    retry_delays_s: Annotated[
        tuple[PositiveFloat, ...],
        env("PROVISIONER_RETRY_DELAYS_S", "comma-separated delays between create attempts"),
    ] = (2.0, 10.0, 30.0, 60.0, 120.0)
    not_found_grace_s: Annotated[
        float,
        env("PROVISIONER_NOT_FOUND_GRACE_S", "how long a fresh cluster may be missing", ge=0),
    ] = 60.0
    options_ttl_s: Annotated[
        float, env("PROVISIONER_OPTIONS_TTL_S", "how long the options are cached", gt=0)
    ] = 300.0
    max_message_bytes: Annotated[
        int, env("PROVISIONER_MAX_MESSAGE_BYTES", "larger commands are parked", ge=1024)
    ] = 1024 * 1024
    shutdown_grace_s: Annotated[
        float, env("PROVISIONER_SHUTDOWN_GRACE_S", "time in-flight work has to finish", ge=0)
    ] = 20.0
    publish_timeout_s: Annotated[
        float, env("PROVISIONER_PUBLISH_TIMEOUT_S", "wait for the broker's confirm", gt=0)
    ] = 10.0
    rate_limit_per_minute: Annotated[
        int, env("PROVISIONER_RATE_LIMIT_PER_MINUTE", "the client's burst budget", ge=1)
    ] = 250
    rate_limit_per_hour: Annotated[
        int, env("PROVISIONER_RATE_LIMIT_PER_HOUR", "the client's hourly budget", ge=1)
    ] = 5000
    rate_limit_minute_window_s: Annotated[
        float, env("PROVISIONER_RATE_LIMIT_MINUTE_WINDOW_S", "the burst window", gt=0)
    ] = 60.0
    rate_limit_hour_window_s: Annotated[
        float, env("PROVISIONER_RATE_LIMIT_HOUR_WINDOW_S", "the hourly window", gt=0)
    ] = 3600.0
    finish_max_attempts: Annotated[
        int, env("PROVISIONER_FINISH_MAX_ATTEMPTS", "attempts at finishing a cluster", ge=1)
    ] = 10
    finish_budget_s: Annotated[
        float,
        env("PROVISIONER_FINISH_BUDGET_S", "retry time of one refused finishing call", gt=0),
    ] = 30.0
    amqp_url_order: Annotated[
        Literal["shuffle", "listed"],
        env("PROVISIONER_AMQP_URL_ORDER", "start at a random node of the list, or the first"),
    ] = "shuffle"
    quorum_group_size: Annotated[
        int,
        env("PROVISIONER_QUORUM_GROUP_SIZE", "members of a new quorum queue", ge=1, le=99),
    ] = 3

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


def _declared() -> dict[str, tuple[str, msgspec.inspect.Type]]:
    """Settings field -> (environment variable, type), as ``Settings`` declares them."""
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {}
    for field in info.fields:
        if isinstance(field.type, msgspec.inspect.Metadata) and field.type.extra:
            fields[field.name] = (str(field.type.extra["env"]), field.type.type)
    return fields


_FIELDS: Final = _declared()
# Environment variable -> Settings field. The README's configuration table lists these.
ENVIRONMENT: Final[Mapping[str, str]] = {variable: name for name, (variable, _) in _FIELDS.items()}
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
        if isinstance(_FIELDS[field][1], msgspec.inspect.VarTupleType):
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
    kind = _FIELDS[field][1]
    return [str(v) for v in kind.values] if isinstance(kind, msgspec.inspect.LiteralType) else []
