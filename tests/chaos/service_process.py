"""``provisioner run`` as a process of its own in a test: its environment against the
simulator, its JSON log read back, bounded waits on what it logs, a clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.simulator import Simulator
from tests.chaos.replicas import provisioner_executable

__all__ = [
    "log_events",
    "named",
    "service_env",
    "start_service",
    "stop_service",
    "wait_for_log",
]


def service_env(amqp_url: str, simulator: Simulator, **extra: str) -> dict[str, str]:
    """``provisioner run``'s environment against ``amqp_url`` and the simulator."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "DIGITALOCEAN_"))
    }
    env.update(
        {
            "PROVISIONER_AMQP_URL": amqp_url,
            "DIGITALOCEAN_TOKEN": simulator.config.token,
            "DIGITALOCEAN_API_URL": simulator.base_url,
            "PROVISIONER_POLL_INTERVAL_S": "0.3",
            "PROVISIONER_RETRY_DELAYS_S": "0.3,0.6,1,2,4",
            "PROVISIONER_FINISH_MAX_ATTEMPTS": "100",
            "PROVISIONER_PUBLISH_TIMEOUT_S": "3",
            "PROVISIONER_SHUTDOWN_GRACE_S": "5",
            "PROVISIONER_HTTP_HOST": "127.0.0.1",
            "PROVISIONER_HTTP_PORT": "0",
            "PROVISIONER_LOG_FORMAT": "json",
            **extra,
        }
    )
    return env


async def start_service(env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    """``provisioner run`` as a process of its own, logging to ``log_path``."""
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            provisioner_executable(),
            "run",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def log_events(log_path: Path) -> list[dict[str, Any]]:
    """The service's JSON log lines so far (anything else in the file is skipped)."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


async def wait_for_log(
    log_path: Path,
    predicate: Callable[[list[dict[str, Any]]], bool],
    *,
    process: asyncio.subprocess.Process,
    timeout: float,
    what: str,
) -> list[dict[str, Any]]:
    """Poll the service's log until ``predicate`` holds; fail if the process exits or the
    time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        events = log_events(log_path)
        if predicate(events):
            return events
        if process.returncode is not None:
            pytest.fail(f"the service exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            tail = [e.get("event") for e in events[-15:]]
            pytest.fail(f"no {what} within {timeout:g} s; last log events: {tail}")
        await asyncio.sleep(0.1)


async def stop_service(process: asyncio.subprocess.Process) -> int:
    """SIGTERM, and the exit code (the process is killed if it does not stop)."""
    if process.returncode is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


def named(event: str) -> Callable[[list[dict[str, Any]]], int]:
    """How many log lines carry ``event``."""
    return lambda events: sum(1 for e in events if e.get("event") == event)
