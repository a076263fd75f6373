"""Shared fixtures: a real RabbitMQ, the simulator over loopback, the spec on disk."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.spec",
    "tests.fixtures.simulator",
    "tests.fixtures.broker",
    "tests.fixtures.permissions",
]
