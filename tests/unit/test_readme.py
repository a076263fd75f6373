"""The README documents what the code does: every setting and every command."""

from __future__ import annotations

from pathlib import Path

from service.broker.topology import (
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_MESSAGES,
    PARKING_MAX_BYTES,
    PARKING_MAX_MESSAGES,
)
from service.cli import COMMANDS
from service.config import ENVIRONMENT, TOKEN_FILE_VARIABLE, TOKEN_VARIABLES, Settings
from service.metrics import ProvisionerMetrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_environment_variable_with_its_default() -> None:
    defaults = Settings()
    for variable, field in ENVIRONMENT.items():
        row = next((line for line in README.splitlines() if f"| `{variable}` |" in line), None)
        assert row is not None, f"{variable} is missing from the README's configuration table"
        value = getattr(defaults, field)
        shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
        if isinstance(shown, float):
            shown = f"{shown:g}"
        documented = "(none)" if shown == "" else f"`{shown}`"
        assert documented in row, f"{variable}: README does not show the default {shown!r}"
    for variable in (*TOKEN_VARIABLES, TOKEN_FILE_VARIABLE):
        assert f"`{variable}`" in README


def test_readme_lists_every_cli_command() -> None:
    for name in COMMANDS:
        assert f"`provisioner {name}" in README, name


def test_readme_lists_every_metric() -> None:
    metrics = ProvisionerMetrics()
    metrics.watch_readiness(lambda: {"consuming": True})
    text = metrics.render()
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    missing = [name for name in names if f"`{name}" not in README]
    assert not missing, f"metrics missing from the README: {missing}"


def test_readme_states_the_bounds_of_the_parking_and_dead_letter_queues() -> None:
    for messages, size in (
        (PARKING_MAX_MESSAGES, PARKING_MAX_BYTES),
        (DEAD_LETTER_MAX_MESSAGES, DEAD_LETTER_MAX_BYTES),
    ):
        assert f"at most {messages:,} messages or {size // 2**20} MiB" in README
