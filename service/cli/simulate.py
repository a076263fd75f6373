"""``provisioner simulate``: serve the DigitalOcean API simulator until SIGINT or SIGTERM.

The token comes from ``SIMULATOR_TOKEN`` (or ``DIGITALOCEAN_TOKEN`` /
``DIGITALOCEAN_ACCESS_TOKEN``, so that the service and the simulator can share one
setting); ``--token`` exists for throwaway tokens only, because a command line is visible
to every user of the machine in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Mapping
from datetime import date
from typing import Final

import msgspec
import structlog

from service.observability import configure_logging
from service.redaction import register_secret
from service.simulator.config import SimulatorConfig
from service.simulator.server import STATS_PATH, Simulator

__all__ = ["TOKEN_VARIABLES", "add_arguments", "config_from_args", "main"]

TOKEN_VARIABLES: Final = ("SIMULATOR_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
"""Where the token is read from when ``--token`` is not given, first set wins."""

_DEFAULTS: Final = SimulatorConfig()
log = structlog.get_logger("service.simulator")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return value


# (flag, SimulatorConfig field, type, metavar, help): one option per knob.
_KNOBS: Final[tuple[tuple[str, str, Callable[[str], object], str, str], ...]] = (
    ("--ready-after", "ready_after_s", _seconds, "SECONDS",
     "seconds a new cluster stays `creating`"),
    ("--ready-jitter", "ready_jitter_s", _seconds, "SECONDS",
     "uniform extra delay, up to this many seconds, per cluster"),
    ("--stuck-fraction", "stuck_fraction", _fraction, "FRACTION",
     "fraction of clusters that stay `creating` for ever"),
    ("--not-found-grace", "not_found_grace_s", _seconds, "SECONDS",
     "a new cluster answers 404 for this long, as the real API can"),
    ("--rate-per-minute", "rate_limit_per_minute", _count, "N",
     "burst limit: requests per token in any minute window"),
    ("--rate-per-hour", "rate_limit_per_hour", _count, "N",
     "requests per token in any hour window (sent as ratelimit-limit)"),
    ("--minute-window", "minute_window_s", _positive_seconds, "SECONDS",
     "length of the burst window, shorter to compress time"),
    ("--hour-window", "hour_window_s", _positive_seconds, "SECONDS",
     "length of the hourly window"),
    ("--fail-500", "fail_500_fraction", _fraction, "FRACTION",
     "fraction of requests answered 500 server_error"),
    ("--fail-429", "fail_429_fraction", _fraction, "FRACTION",
     "fraction of requests answered 429 with retry-after 1"),
    ("--latency", "latency_s", _seconds, "SECONDS", "delay added to every request"),
    ("--drop", "drop_fraction", _fraction, "FRACTION",
     "fraction of requests whose connection is closed without an answer"),
    ("--unsettled", "unsettled_s", _seconds, "SECONDS",
     "after `online`, user and database calls fail with 404/412/5xx for this long"),
    ("--user-create-time", "user_create_s", _seconds, "SECONDS",
     "how long a user creation takes; a concurrent one on the same cluster gets 500"),
    ("--drop-after-effect", "drop_after_effect_fraction", _fraction, "FRACTION",
     "of the dropped requests, the fraction that took effect first "
     "(a create that did create its cluster)"),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``provisioner simulate``: where to listen, and every knob."""
    parser.epilog = (
        "The accepted token is read from SIMULATOR_TOKEN, else DIGITALOCEAN_TOKEN, else "
        f"DIGITALOCEAN_ACCESS_TOKEN, else it is {_DEFAULTS.token!r}. "
        f"Counters: GET {STATS_PATH}."
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add(
        "--port", type=int, default=8089, help="port to listen on, 0 for any (default: %(default)s)"
    )
    add(
        "--token",
        default=None,
        help="the bearer token to accept; only for throwaway tokens, since a command line "
        "shows in `ps`: prefer the SIMULATOR_TOKEN environment variable",
    )
    for flag, field, kind, metavar, text in _KNOBS:
        add(
            flag,
            dest=field,
            type=kind,
            default=getattr(_DEFAULTS, field),
            metavar=metavar,
            help=f"{text} (default: %(default)s)",
        )
    add(
        "--read-only-token",
        action="store_true",
        help="answer as to a token that may not see credentials: every password is empty",
    )
    add(
        "--options-date",
        type=date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="the day the options are aged to: versions past their end of availability are "
        "not offered (default: today)",
    )
    add("--seed", type=int, default=None, help="seed for faults, jitter and ids (random)")
    add(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="format of the log lines on stderr (default: %(default)s)",
    )


def token_from(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    """The token to accept and where it came from (for the log; never the token itself)."""
    if args.token:
        return args.token, "--token"
    for name in TOKEN_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return _DEFAULTS.token, "the built-in default"


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SimulatorConfig:
    """The ``SimulatorConfig`` the options and the environment describe."""
    token, _ = token_from(args, os.environ if environ is None else environ)
    knobs = {field: getattr(args, field) for _, field, _, _, _ in _KNOBS}
    return msgspec.structs.replace(
        _DEFAULTS,
        token=token,
        seed=args.seed,
        read_only_token=args.read_only_token,
        options_date=args.options_date,
        **knobs,
    )


async def _serve(simulator: Simulator, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await simulator.start(host, port)
        log.info("simulator listening", url=url, stats=f"{url}{STATS_PATH}")
        await stop.wait()
        log.info("simulator stopping", requests=simulator.stats().requests)
    finally:
        await simulator.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(args: argparse.Namespace) -> int:
    """Run the simulator until SIGINT or SIGTERM; 0 on a clean stop."""
    configure_logging(args.log_format)
    token, source = token_from(args, os.environ)
    register_secret(token)
    config = config_from_args(args)
    log.info("simulator token", source=source)
    asyncio.run(_serve(Simulator(config), args.host, args.port))
    return 0
