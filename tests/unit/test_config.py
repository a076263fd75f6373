"""Settings from the environment (service/config.py).

* every variable of ``ENVIRONMENT`` reaches its ``Settings`` field, decoded and typed;
* a bad value is a ``ConfigError`` that names the variable and the rule, and never repeats
  the token (or the refused value, which may be a secret pasted into the wrong variable);
* the token comes from ``DIGITALOCEAN_TOKEN``, ``DIGITALOCEAN_ACCESS_TOKEN`` or the file that
  ``DIGITALOCEAN_TOKEN_FILE`` names, and never from a command-line option;
* neither the token nor the broker password shows in any rendering of ``Settings``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from rich.console import Console

from service.cli import build_parser
from service.config import ENVIRONMENT, ConfigError, Settings, load_settings

TOKEN: Final = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"
AMQP_PASSWORD: Final = "br0ker-Pa55word"
AMQP_URL: Final = f"amqps://provisioner:{AMQP_PASSWORD}@rabbit.internal:5671/databases"

# One non-default value per variable, and what it decodes to.
DECODED: Final[dict[str, tuple[str, Any]]] = {
    "PROVISIONER_AMQP_URL": (AMQP_URL, AMQP_URL),
    "DIGITALOCEAN_API_URL": ("http://127.0.0.1:8089", "http://127.0.0.1:8089"),
    "PROVISIONER_POLL_INTERVAL_S": ("2.5", 2.5),
    "PROVISIONER_CREATE_TIMEOUT_S": ("3600", 3600.0),
    "PROVISIONER_HTTP_HOST": ("127.0.0.1", "127.0.0.1"),
    "PROVISIONER_HTTP_PORT": ("9090", 9090),
    "PROVISIONER_LOG_FORMAT": ("console", "console"),
    "PROVISIONER_LOG_LEVEL": ("DEBUG", "DEBUG"),
    "PROVISIONER_MANAGED_TAG": ("team-db:prod", "team-db:prod"),
    "PROVISIONER_EVENT_SOURCE": ("/provisioner/eu", "/provisioner/eu"),
    "PROVISIONER_EVENT_SECRETS": ("sealed", "sealed"),
    "PROVISIONER_POLICY_FILE": ("/etc/provisioner/policy.toml", "/etc/provisioner/policy.toml"),
    "PROVISIONER_POLL_MODE": ("per-cluster", "per-cluster"),
    "PROVISIONER_COMMAND_PREFETCH": ("4", 4),
    "PROVISIONER_WATCH_PREFETCH": ("50", 50),
    "PROVISIONER_RETRY_DELAYS_S": ("1, 5 ,30", (1.0, 5.0, 30.0)),
    "PROVISIONER_NOT_FOUND_GRACE_S": ("0", 0.0),
    "PROVISIONER_OPTIONS_TTL_S": ("60", 60.0),
    "PROVISIONER_MAX_MESSAGE_BYTES": ("65536", 65536),
    "PROVISIONER_SHUTDOWN_GRACE_S": ("5", 5.0),
    "PROVISIONER_PUBLISH_TIMEOUT_S": ("2.5", 2.5),
    "PROVISIONER_RATE_LIMIT_PER_MINUTE": ("100", 100),
    "PROVISIONER_RATE_LIMIT_PER_HOUR": ("2000", 2000),
    "PROVISIONER_RATE_LIMIT_MINUTE_WINDOW_S": ("30", 30.0),
    "PROVISIONER_RATE_LIMIT_HOUR_WINDOW_S": ("1800", 1800.0),
    "PROVISIONER_FINISH_MAX_ATTEMPTS": ("3", 3),
    "PROVISIONER_FINISH_BUDGET_S": ("5", 5.0),
    "PROVISIONER_AMQP_URL_ORDER": ("listed", "listed"),
    "PROVISIONER_QUORUM_GROUP_SIZE": ("5", 5),
}

# A value each variable refuses, and words of the rule the error must state.
REFUSED: Final[list[tuple[str, str, str]]] = [
    ("PROVISIONER_POLL_INTERVAL_S", "soon", "Expected `float`"),
    ("PROVISIONER_POLL_INTERVAL_S", "0", "> 0"),
    ("PROVISIONER_CREATE_TIMEOUT_S", "-1", "> 0"),
    ("PROVISIONER_HTTP_PORT", "70000", "<= 65535"),
    ("PROVISIONER_HTTP_PORT", "-1", ">= 0"),
    ("PROVISIONER_HTTP_PORT", "http", "Expected `int`"),
    ("PROVISIONER_MANAGED_TAG", "has spaces", "regex"),
    ("PROVISIONER_MANAGED_TAG", "x" * 65, "regex"),
    ("PROVISIONER_COMMAND_PREFETCH", "0", ">= 1"),
    ("PROVISIONER_COMMAND_PREFETCH", "1001", "<= 1000"),
    ("PROVISIONER_COMMAND_PREFETCH", "1.5", "Expected `int`"),
    ("PROVISIONER_WATCH_PREFETCH", "10001", "<= 10000"),
    ("PROVISIONER_RETRY_DELAYS_S", "1,later", "Expected `float`"),
    ("PROVISIONER_RETRY_DELAYS_S", "1,-2", "> 0"),
    ("PROVISIONER_NOT_FOUND_GRACE_S", "-1", ">= 0"),
    ("PROVISIONER_OPTIONS_TTL_S", "0", "> 0"),
    ("PROVISIONER_MAX_MESSAGE_BYTES", "1023", ">= 1024"),
    ("PROVISIONER_SHUTDOWN_GRACE_S", "-0.5", ">= 0"),
    ("PROVISIONER_PUBLISH_TIMEOUT_S", "0", "> 0"),
    ("PROVISIONER_RATE_LIMIT_PER_MINUTE", "0", ">= 1"),
    ("PROVISIONER_RATE_LIMIT_PER_HOUR", "0", ">= 1"),
    ("PROVISIONER_RATE_LIMIT_MINUTE_WINDOW_S", "0", "> 0"),
    ("PROVISIONER_RATE_LIMIT_HOUR_WINDOW_S", "0", "> 0"),
    ("PROVISIONER_FINISH_MAX_ATTEMPTS", "0", ">= 1"),
    ("PROVISIONER_FINISH_BUDGET_S", "0", "> 0"),
    ("PROVISIONER_LOG_FORMAT", "xml", "enum"),
    ("PROVISIONER_LOG_LEVEL", "verbose", "enum"),
    ("PROVISIONER_EVENT_SECRETS", "hide", "enum"),
    ("PROVISIONER_POLL_MODE", "push", "enum"),
    ("PROVISIONER_AMQP_URL_ORDER", "random", "enum"),
    ("PROVISIONER_QUORUM_GROUP_SIZE", "0", ">= 1"),
]


def env(**variables: str) -> dict[str, str]:
    """An environment with the token and ``variables``."""
    return {"DIGITALOCEAN_TOKEN": TOKEN, **variables}


def test_the_table_covers_every_variable_the_service_reads() -> None:
    assert set(DECODED) == set(ENVIRONMENT)
    assert {variable for variable, _, _ in REFUSED} | {
        "PROVISIONER_AMQP_URL",
        "DIGITALOCEAN_API_URL",
        "PROVISIONER_HTTP_HOST",
        "PROVISIONER_EVENT_SOURCE",
        "PROVISIONER_POLICY_FILE",  # its file is checked by load_policy (tests/unit/test_policy.py)
    } == set(ENVIRONMENT)


def test_every_variable_decodes_into_its_setting() -> None:
    settings = load_settings(env(**{name: raw for name, (raw, _) in DECODED.items()}))
    for name, (_, expected) in DECODED.items():
        assert getattr(settings, ENVIRONMENT[name]) == expected, name
    assert settings.token == TOKEN


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_each_variable_alone_changes_only_its_own_setting(name: str) -> None:
    raw, expected = DECODED[name]
    settings = load_settings(env(**{name: raw}))
    defaults = msgspec.structs.asdict(Settings(token=TOKEN))
    changed = {
        field: value
        for field, value in msgspec.structs.asdict(settings).items()
        if defaults[field] != value
    }
    assert changed == {ENVIRONMENT[name]: expected}


def test_unset_and_empty_variables_leave_the_defaults() -> None:
    assert load_settings(env()) == Settings(token=TOKEN)
    assert load_settings(env(**dict.fromkeys(ENVIRONMENT, ""))) == Settings(token=TOKEN)


def test_retry_delays_set_the_attempt_limit() -> None:
    settings = load_settings(env(PROVISIONER_RETRY_DELAYS_S="1,2,3"))
    assert settings.max_command_attempts == 4


@pytest.mark.parametrize(
    ("name", "value", "rule"), REFUSED, ids=[f"{n}={v[:12]}" for n, v, _ in REFUSED]
)
def test_a_bad_value_names_the_variable_and_the_rule(name: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env(**{name: value}))
    message = str(refused.value)
    assert f"`{name}" in message
    assert rule in message
    assert TOKEN not in message


@pytest.mark.parametrize("name", sorted({n for n, _, _ in REFUSED}))
def test_a_refused_value_is_never_repeated_in_the_error(name: str) -> None:
    # The worst case: an operator pasted the token into the wrong variable.
    with pytest.raises(ConfigError) as refused:
        load_settings({"DIGITALOCEAN_TOKEN": "x" * 8, name: TOKEN})
    assert name in str(refused.value)
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["http://api.digitalocean.com", "http://10.0.0.5:8089", "ftp://api.digitalocean.com"]
)
def test_an_api_url_off_loopback_without_tls_is_refused_at_load(url: str) -> None:
    with pytest.raises(ConfigError, match="DIGITALOCEAN_API_URL") as refused:
        load_settings(env(DIGITALOCEAN_API_URL=url))
    assert any(rule in str(refused.value) for rule in ("https://", "http(s)://"))


@pytest.mark.parametrize(
    "url",
    [
        f"http://svc:{AMQP_PASSWORD}@rabbit:5672/",
        f"amqp://svc:{AMQP_PASSWORD}@/databases",
        f"amqp://svc:{AMQP_PASSWORD}@rabbit:port/databases",
        f"rabbit.internal:{AMQP_PASSWORD}",
    ],
    ids=["http", "no-host", "bad-port", "no-scheme"],
)
def test_a_broker_url_that_is_not_amqp_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="PROVISIONER_AMQP_URL") as refused:
        load_settings(env(PROVISIONER_AMQP_URL=url))
    assert AMQP_PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"{AMQP_URL},", "empty address (address 2 of 2)"),
        (f"{AMQP_URL},http://svc:{AMQP_PASSWORD}@rabbit:5672/", "(address 2 of 2)"),
        (
            f"{AMQP_URL},amqps://other:{AMQP_PASSWORD}@rabbit-2:5671/databases",
            "every address must name the same user",
        ),
    ],
    ids=["trailing-comma", "second-not-amqp", "two-users"],
)
def test_a_bad_address_in_a_list_is_named_by_its_position_without_its_password(
    value: str, says: str
) -> None:
    with pytest.raises(ConfigError, match="PROVISIONER_AMQP_URL") as refused:
        load_settings(env(PROVISIONER_AMQP_URL=value))
    assert says in str(refused.value)
    assert AMQP_PASSWORD not in str(refused.value)


def test_a_list_of_addresses_gives_every_node_and_one_user() -> None:
    second = AMQP_URL.replace("rabbit.internal", "rabbit-2.internal")
    settings = load_settings(env(PROVISIONER_AMQP_URL=f" {AMQP_URL} , {second} "))
    assert settings.amqp_urls == [AMQP_URL, second]
    assert settings.amqp_user == "provisioner"


def test_a_bad_managed_tag_error_states_the_pattern() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env(PROVISIONER_MANAGED_TAG="has spaces"))
    assert "A-Za-z0-9_:" in str(refused.value)


# --- the token ---------------------------------------------------------------------------


def test_token_from_digitalocean_token() -> None:
    assert load_settings({"DIGITALOCEAN_TOKEN": TOKEN}).token == TOKEN


def test_token_from_digitalocean_access_token() -> None:
    assert load_settings({"DIGITALOCEAN_ACCESS_TOKEN": TOKEN}).token == TOKEN


def test_token_from_the_file_digitalocean_token_file_names(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(f"{TOKEN}\n")  # as `kubectl create secret` and editors leave it
    assert load_settings({"DIGITALOCEAN_TOKEN_FILE": str(secret)}).token == TOKEN


def test_the_token_variables_win_in_order_over_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-the-file")
    both = {
        "DIGITALOCEAN_TOKEN": "from-token",
        "DIGITALOCEAN_ACCESS_TOKEN": "from-access-token",
        "DIGITALOCEAN_TOKEN_FILE": str(secret),
    }
    assert load_settings(both).token == "from-token"
    del both["DIGITALOCEAN_TOKEN"]
    assert load_settings(both).token == "from-access-token"
    del both["DIGITALOCEAN_ACCESS_TOKEN"]
    assert load_settings(both).token == "from-the-file"


def test_a_blank_token_variable_counts_as_unset() -> None:
    assert load_settings(
        {"DIGITALOCEAN_TOKEN": "  ", "DIGITALOCEAN_ACCESS_TOKEN": TOKEN}
    ).token == (TOKEN)


@pytest.mark.parametrize(
    "environment",
    [{}, {"DIGITALOCEAN_TOKEN": ""}, {"DIGITALOCEAN_TOKEN": " \n"}],
    ids=["unset", "empty", "blank"],
)
def test_no_token_is_an_error_that_says_where_to_put_one(environment: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environment)
    message = str(refused.value)
    for variable in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN_FILE"):
        assert variable in message


def test_an_empty_token_file_is_no_token(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no DigitalOcean token"):
        load_settings({"DIGITALOCEAN_TOKEN_FILE": str(empty)})


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_token_file_names_the_variable_and_the_reason(
    kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "absent" if kind == "missing" else tmp_path
    with pytest.raises(ConfigError) as refused:
        load_settings({"DIGITALOCEAN_TOKEN_FILE": str(path)})
    message = str(refused.value)
    assert message.startswith("DIGITALOCEAN_TOKEN_FILE: cannot read ")
    assert ("No such file" if kind == "missing" else "directory") in message


def test_a_missing_token_is_allowed_where_the_caller_needs_none() -> None:
    assert load_settings({}, require_token=False).token == ""


def test_the_run_command_takes_no_token_option(capsys: pytest.CaptureFixture[str]) -> None:
    # A command line is visible in `ps` and shell history: the token never goes there.
    parser = build_parser("run")
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["run", "--token", TOKEN])
    assert refused.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    assert "token" not in capsys.readouterr().out.lower()


# --- renderings of Settings --------------------------------------------------------------


def secret_settings() -> Settings:
    return load_settings(env(PROVISIONER_AMQP_URL=AMQP_URL))


@pytest.mark.parametrize("render", [repr, str, lambda s: f"{s!r} {s}"])
def test_settings_repr_never_shows_the_token_or_the_broker_password(render: Any) -> None:
    text = render(secret_settings())
    assert TOKEN not in text
    assert AMQP_PASSWORD not in text
    assert text.startswith("Settings(")


def test_an_exception_carrying_settings_shows_no_secret() -> None:
    error = RuntimeError("cannot start with", secret_settings())
    assert TOKEN not in str(error) and AMQP_PASSWORD not in repr(error)


def test_settings_rich_rendering_never_shows_the_token_or_the_broker_password() -> None:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(secret_settings())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert TOKEN not in text
    assert AMQP_PASSWORD not in text
