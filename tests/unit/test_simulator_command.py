"""``provisioner simulate`` options: every knob reaches the config; the token stays off argv."""

from __future__ import annotations

import argparse

import pytest

from service.cli.simulate import add_arguments, config_from_args, token_from
from service.simulator import SimulatorConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="provisioner simulate")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_the_config_defaults() -> None:
    args = parse()
    assert (args.host, args.port) == ("127.0.0.1", 8089)
    assert config_from_args(args, environ={}) == SimulatorConfig()


def test_every_knob_reaches_the_config() -> None:
    args = parse(
        "--ready-after", "0.5", "--ready-jitter", "0.25", "--stuck-fraction", "0.1",
        "--not-found-grace", "1.5", "--rate-per-minute", "10", "--rate-per-hour", "100",
        "--minute-window", "2", "--hour-window", "20", "--fail-500", "0.2", "--fail-429", "0.3",
        "--latency", "0.05", "--drop", "0.4", "--drop-after-effect", "0.5", "--seed", "7",
    )  # fmt: skip
    assert config_from_args(args, environ={}) == SimulatorConfig(
        ready_after_s=0.5,
        ready_jitter_s=0.25,
        stuck_fraction=0.1,
        not_found_grace_s=1.5,
        rate_limit_per_minute=10,
        rate_limit_per_hour=100,
        minute_window_s=2.0,
        hour_window_s=20.0,
        fail_500_fraction=0.2,
        fail_429_fraction=0.3,
        latency_s=0.05,
        drop_fraction=0.4,
        drop_after_effect_fraction=0.5,
        seed=7,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("--fail-500", "1.5"),
        ("--drop", "-0.1"),
        ("--latency", "-1"),
        ("--rate-per-minute", "0"),
        ("--minute-window", "0"),
    ],
)
def test_out_of_range_knobs_are_refused(argv: tuple[str, str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


SIM, DO, DO_ACCESS = "SIMULATOR_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ((), {}, ("sim-token", "the built-in default")),
        ((), {DO_ACCESS: "c"}, ("c", DO_ACCESS)),
        ((), {DO: "b", DO_ACCESS: "c"}, ("b", DO)),
        ((), {SIM: "a", DO: "b"}, ("a", SIM)),
        ((), {SIM: "  ", DO: "b"}, ("b", DO)),
        (("--token", "throwaway"), {SIM: "a"}, ("throwaway", "--token")),
    ],
)
def test_token_comes_from_the_flag_then_the_environment(
    argv: tuple[str, ...], environ: dict[str, str], expected: tuple[str, str]
) -> None:
    args = parse(*argv)
    assert token_from(args, environ) == expected
    assert config_from_args(args, environ).token == expected[0]


def test_help_says_the_token_flag_is_for_throwaway_tokens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "only for throwaway tokens" in text
    assert "SIMULATOR_TOKEN" in text
