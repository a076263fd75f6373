"""Instructions per command: what the service itself spends on one command, counted by
valgrind (callgrind), so that the figure does not move with the load of the machine as the
throughput ratio does.

The service runs under ``valgrind --tool=callgrind`` as ``bench.throughput`` runs it (same
settings, tracing off). Warm-up commands go first; once their results are out the counters
are zeroed (``callgrind_control --zero``), the measured commands are queued, and when their
results are out the counters are written (``callgrind_control --dump``): the instructions
between the two, divided by the commands, are the figure. The accept path's precheck lists
the account once a second of wall time, and a list reads every cluster: under valgrind a run
lasts long enough for that to dominate, so each cluster is deleted (in the simulator, in this
process) as soon as its result is out, and the list stays short.

Run it on two commits, on the same machine, to compare them: ``python -m bench.instructions
--path accept`` (needs ``valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Final

import aio_pika

from bench._harness import (
    EventLog,
    ServiceProcess,
    emit,
    fresh_vhost,
    publish_many,
    running_simulator,
    service_env,
)
from bench.throughput import (
    POLL_INTERVAL_S,
    RESULT,
    UNLIMITED,
    path_command,
    tracing_env,
)
from bench.throughput import Path as CommandPath
from contracts.events import StatusChanged
from service.broker.topology import Topology, declare
from service.config import DEFAULT_COMMAND_PREFETCH
from service.simulator import Simulator, SimulatorConfig

SLOW_TIMEOUT_S: Final = 1800.0  # everything is some 50 times slower under valgrind


def _summary(dump: Path) -> int:
    """The instruction count a callgrind dump's ``summary:`` line gives."""
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise ValueError(f"{dump} has no summary line")


async def _delete_created(simulator: Simulator, config: SimulatorConfig, events: EventLog) -> None:
    """Delete each cluster whose ``status_changed`` event came, so the lists stay short."""
    seen = 0
    while True:
        for _, event in events.received[seen:]:
            if isinstance(event, StatusChanged):
                with contextlib.suppress(Exception):
                    simulator.account.delete(event.data.cluster_id, time.monotonic(), config)
        seen = len(events.received)
        await asyncio.sleep(0.05)


async def measure(path: CommandPath, commands: int, warm: int) -> dict[str, object]:
    """Instructions per command on ``path`` (``reject`` or ``accept``)."""
    config = SimulatorConfig(
        ready_after_s=3600, rate_limit_per_minute=UNLIMITED, rate_limit_per_hour=UNLIMITED
    )
    topology = Topology(poll_interval_s=POLL_INTERVAL_S)
    key = RESULT[path]
    out = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    dump = out / "callgrind.out"
    async with fresh_vhost("instructions") as amqp_url:
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel()
        await declare(channel, topology)
        await channel.close()
        events = EventLog()
        async with running_simulator(config) as simulator:
            await events.subscribe(connection, topology.events_exchange)
            deleting = asyncio.ensure_future(_delete_created(simulator, config, events))
            env = service_env(
                amqp_url,
                simulator.base_url,
                poll_interval_s=POLL_INTERVAL_S,
                command_prefetch=DEFAULT_COMMAND_PREFETCH,
                rate_limit_per_minute=UNLIMITED,
                rate_limit_per_hour=UNLIMITED,
            )
            env.update(tracing_env(None))
            service = ServiceProcess(
                env,
                "instructions",
                wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"),
            )
            try:
                await service.start(timeout=SLOW_TIMEOUT_S)
                for label, count, total in (("w", warm, warm), ("m", commands, warm + commands)):
                    if label == "m":
                        _control("--zero", service.pid)
                    await publish_many(
                        connection,
                        (path_command(path, label, i) for i in range(count)),
                        routing_key=topology.requests_queue,
                    )
                    await events.wait_until(
                        partial(_reached, events, key, total),
                        timeout=SLOW_TIMEOUT_S,
                        what=f"service {path}",
                    )
                _control("--dump", service.pid)
            finally:
                deleting.cancel()
                await service.stop(timeout=SLOW_TIMEOUT_S)
                await events.close()
                await connection.close()
    counted = _summary(out / f"{dump.name}.1")  # the first dump: between zero and dump
    shutil.rmtree(out, ignore_errors=True)
    return {
        "benchmark": "instructions",
        "path": path,
        "commands": commands,
        "instructions_per_command": round(counted / commands),
    }


def _reached(events: EventLog, key: str, total: int) -> bool:
    return events.count(key) >= total


def _control(what: str, pid: int) -> None:
    subprocess.run(["callgrind_control", what, str(pid)], check=True, capture_output=True)


def main() -> int:
    """``python -m bench.instructions [--path reject|accept] [--commands N]``."""
    parser = argparse.ArgumentParser(description="instructions per command (callgrind)")
    parser.add_argument("--path", choices=("reject", "accept"), default="accept")
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--warm", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    path: CommandPath = "accept" if args.path == "accept" else "reject"
    emit(asyncio.run(measure(path, args.commands, args.warm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
