"""``provisioner simulate`` as a real process: serves with the token from the environment and
exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "process-token-7f3a9c"
# The console script the project installs, beside the interpreter running the tests.
PROVISIONER = str(Path(sys.executable).parent / "provisioner")


async def _listening_url(stderr: asyncio.StreamReader, seen: list[str]) -> str:
    """Read JSON log lines until the simulator says where it listens."""
    while True:
        line = (await stderr.readline()).decode()
        if not line:
            raise AssertionError(f"the simulator exited before listening: {seen}")
        seen.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # not a log line (an interpreter warning, say)
        if event.get("event") == "simulator listening":
            url: str = event["url"]
            return url


async def test_simulate_serves_with_the_environment_token_and_exits_0_on_sigterm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITALOCEAN_", "SIMULATOR_"))}
    env["SIMULATOR_TOKEN"] = TOKEN
    process = await asyncio.create_subprocess_exec(
        PROVISIONER, "simulate",
        "--port", "0", "--log-format", "json", "--ready-after", "0.1",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    try:
        url = await asyncio.wait_for(_listening_url(process.stderr, seen), timeout=20)
        async with aiohttp.ClientSession(base_url=url) as session:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get("/v2/databases/options", headers=headers) as response:
                assert response.status == 200
                assert "pg" in (await response.json())["options"]
            wrong = {"Authorization": "Bearer sim-token"}
            async with session.get("/v2/databases/options", headers=wrong) as response:
                assert response.status == 401
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        rest = await asyncio.wait_for(process.stderr.read(), timeout=5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(seen) + rest.decode()
    assert "simulator stopping" in output
    assert TOKEN not in output
