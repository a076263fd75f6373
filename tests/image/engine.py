"""The container engine as the image tests drive it: every call goes through
``scripts/container.sh``, the one place that knows what docker and podman each need here."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_SH = ROOT / "scripts" / "container.sh"

__all__ = ["CONTAINER_SH", "Container", "Engine", "Result", "wait_until_ready"]


@dataclass(frozen=True)
class Result:
    """What one engine command did."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Engine:
    """docker or podman, called through ``scripts/container.sh``."""

    name: str

    async def call(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> Result:
        """Run ``container.sh ARGS`` with ``env`` added to this process's environment (values
        the engine reads by name, so that none is on a command line)."""
        process = await asyncio.create_subprocess_exec(
            str(CONTAINER_SH),
            *args,
            env={**os.environ, **(env or {}), "CONTAINER_ENGINE": self.name},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode is not None
        result = Result(process.returncode, out.decode(), err.decode())
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed: {result}")
        return result

    async def inspect_image(self, image: str) -> dict[str, Any]:
        """The image's configuration as ``image inspect`` reports it."""
        out = (await self.call("image", "inspect", image)).stdout
        inspected: list[dict[str, Any]] = json.loads(out)
        return inspected[0]

    async def run_once(self, image: str, *command: str, entrypoint: str = "python") -> Result:
        """Run a throwaway container of ``image`` (read-only, no network) and return its output."""
        return await self.call(
            "run", "--rm", "--read-only", "--network", "none",
            "--entrypoint", entrypoint, image, *command,
        )  # fmt: skip

    def read_only_options(self) -> list[str]:
        """A root filesystem with nothing writable, as Kubernetes' readOnlyRootFilesystem gives:
        podman would otherwise mount tmpfs on /tmp, /var/tmp and /run."""
        if self.name == "podman":
            return ["--read-only", "--read-only-tmpfs=false"]
        return ["--read-only"]


@dataclass
class Container:
    """One detached container of the image, on the host's network."""

    engine: Engine
    name: str = field(default_factory=lambda: f"provisioner-test-{uuid.uuid4().hex[:12]}")

    async def run(
        self,
        image: str,
        *,
        env: Mapping[str, str],
        secret_env: Mapping[str, str] | None = None,
        volumes: Sequence[str] = (),
    ) -> None:
        """Start it with ``env``; ``secret_env`` reaches the engine through its own
        environment and is named, never written, on its command line."""
        secret_env = secret_env or {}
        args = ["run", "--detach", "--name", self.name, "--network", "host"]
        args += self.engine.read_only_options()
        if self.engine.name == "docker":
            # Docker runs the HEALTHCHECK by itself, but first after one interval (15 s).
            args += ["--health-interval", "1s"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for key in secret_env:
            args += ["--env", key]
        for volume in volumes:
            args += ["--volume", volume]
        await self.engine.call(*args, image, env=secret_env)

    async def start(self) -> None:
        """Start it again after a stop, as a restart policy or an operator would."""
        await self.engine.call("start", self.name)

    async def stop(self) -> float:
        """``stop`` with the engine's default timeout (10 s, then SIGKILL); the seconds taken."""
        started = time.monotonic()
        await self.engine.call("stop", self.name, timeout=60)
        return time.monotonic() - started

    async def remove(self) -> None:
        await self.engine.call("rm", "--force", self.name, check=False)

    async def exec(self, *command: str) -> Result:
        """Run ``command`` in the running container, as its user."""
        return await self.engine.call("exec", self.name, *command, check=False)

    async def state(self) -> dict[str, Any]:
        out = (await self.engine.call("inspect", "--format", "{{json .State}}", self.name)).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    async def logs(self) -> str:
        """Everything it wrote (stdout and stderr), across restarts."""
        result = await self.engine.call("logs", self.name)
        return result.stdout + result.stderr

    async def log_events(self) -> list[dict[str, Any]]:
        """Its JSON log lines, decoded."""
        events = []
        for line in (await self.logs()).splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # an engine notice, not the service's
            if isinstance(event, dict):
                events.append(event)
        return events

    async def wait_for_event(
        self, name: str, *, count: int = 1, timeout: float = 30
    ) -> dict[str, Any]:
        """The ``count``-th log event called ``name``, once it is written."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [e for e in await self.log_events() if e.get("event") == name]
            if len(matching) >= count:
                return matching[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name!r} #{count} in {timeout}s:\n{await self.logs()}")
            await asyncio.sleep(0.1)

    async def health_check(self) -> tuple[bool, str]:
        """Run the image's HEALTHCHECK (podman on demand; docker's own, every second) and
        say whether it passed, with the check's output."""
        if self.engine.name == "podman":
            result = await self.engine.call("healthcheck", "run", self.name, check=False)
            state = await self.state()
            health = state.get("Health") or state.get("Healthcheck") or {}
            log = health.get("Log") or [{}]
            return result.returncode == 0, str(log[-1].get("Output", result.stdout))
        deadline = time.monotonic() + 30
        while True:
            health = (await self.state()).get("Health") or {}
            log = health.get("Log") or []
            if log:
                return log[-1].get("ExitCode") == 0, str(log[-1].get("Output", ""))
            if time.monotonic() > deadline:
                return False, f"no health check ran in 30 s: {health}"
            await asyncio.sleep(0.2)


async def wait_until_ready(port: int, timeout: float = 60) -> dict[str, bool]:
    """Ask /readyz on 127.0.0.1:``port`` until it answers 200; its checks."""
    deadline = time.monotonic() + timeout
    last: object = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    last = await response.json()
                    if response.status == 200:
                        checks: dict[str, bool] = await response.json()
                        return checks
            except aiohttp.ClientError as exc:
                last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never answered 200 in {timeout}s; last: {last}")
