"""``rabbitmqctl`` for the chaos run: its own virtual host, cutting connections, queue depths.

Everything runs as an asyncio subprocess with a timeout, so the simulator that shares the
driver's event loop keeps answering while the CLI works.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping
from typing import Final

from msgspec import Struct

__all__ = [
    "QueueDepth",
    "RabbitmqctlError",
    "add_vhost",
    "close_all_connections",
    "delete_vhost",
    "parse_depths",
    "queue_depths",
    "rabbitmqctl",
]

TIMEOUT_S: Final = 60.0


class RabbitmqctlError(RuntimeError):
    """The CLI failed or did not answer in time."""


class QueueDepth(Struct, frozen=True):
    """Messages in one queue: waiting, and delivered but not yet acknowledged."""

    ready: int
    unacked: int

    @property
    def total(self) -> int:
        """Everything the queue still holds."""
        return self.ready + self.unacked


async def rabbitmqctl(
    *args: str, node: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run ``rabbitmqctl -q ARGS`` (against ``node`` if given); its standard output."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise RabbitmqctlError("rabbitmqctl is not installed (`make broker` installs RabbitMQ)")
    argv = [exe, "-q", *(["-n", node] if node else []), *args]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RabbitmqctlError(f"rabbitmqctl {args[0]} did not finish in {TIMEOUT_S:g} s") from None
    if process.returncode != 0:
        raise RabbitmqctlError(
            f"rabbitmqctl {args[0]} exited {process.returncode}: "
            f"{err.decode(errors='replace').strip()[:500]}"
        )
    return out.decode(errors="replace")


async def add_vhost(vhost: str, user: str = "guest") -> None:
    """A new virtual host that ``user`` may use fully."""
    await rabbitmqctl("add_vhost", vhost)
    await rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")


async def delete_vhost(vhost: str) -> None:
    """Delete the virtual host with everything in it."""
    await rabbitmqctl("delete_vhost", vhost)


async def close_all_connections(vhost: str, reason: str) -> None:
    """Force-close every client connection of ``vhost`` (and no other)."""
    await rabbitmqctl("close_all_connections", "-p", vhost, reason)


async def queue_depths(vhost: str) -> dict[str, QueueDepth]:
    """Every queue of ``vhost`` with its ready and unacknowledged messages."""
    out = await rabbitmqctl(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--formatter",
        "json",
    )
    return parse_depths(out)


def parse_depths(out: str) -> dict[str, QueueDepth]:
    """``list_queues name messages_ready messages_unacknowledged --formatter json``, read."""
    rows = json.loads(out or "[]")
    return {
        row["name"]: QueueDepth(
            int(row.get("messages_ready") or 0), int(row.get("messages_unacknowledged") or 0)
        )
        for row in rows
    }
