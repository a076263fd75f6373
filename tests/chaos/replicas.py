"""Service replicas as separate ``provisioner run`` processes, each logging to its own file.

A replica can be killed with SIGKILL (no goodbye: its unacked messages go back to the
broker) and started again; at the end every replica gets SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["Replica", "ReplicaError", "provisioner_executable"]

STARTED_MARKER: Final = b'"service_started"'


class ReplicaError(RuntimeError):
    """A replica did not start or stop as it should."""


def provisioner_executable() -> str:
    """The ``provisioner`` console script of the interpreter running this."""
    exe = shutil.which("provisioner", path=os.path.dirname(sys.executable))
    if exe is None:
        raise ReplicaError("the provisioner console script is missing: run `make` first")
    return exe


class Replica:
    """One ``provisioner run`` process, restartable, appending to ``log_path``."""

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._env = dict(env)
        self._process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0
        self._log_offset = 0  # where the current process's lines begin

    @property
    def running(self) -> bool:
        """Whether the current process is alive."""
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """The current process id, if one was started."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start a new process (the previous one must be gone)."""
        if self.running:
            raise ReplicaError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = await asyncio.create_subprocess_exec(
                provisioner_executable(),
                "run",
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the driver does not reach it directly;
                # the driver stops it.
                start_new_session=True,
            )
        self.starts += 1

    async def wait_started(self, timeout_s: float) -> None:
        """Wait until the current process logged ``service_started``."""
        deadline = time.monotonic() + timeout_s
        while STARTED_MARKER not in self._current_log():
            if not self.running:
                raise ReplicaError(f"{self.name} exited before it started; see {self.log_path}")
            if time.monotonic() > deadline:
                raise ReplicaError(f"{self.name} did not start within {timeout_s:g} s")
            await asyncio.sleep(0.1)

    def _current_log(self) -> bytes:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read()

    async def kill(self) -> None:
        """SIGKILL: the process ends at once, without draining anything."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        self.kills += 1

    async def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM and wait for the exit code; SIGKILL (and None) past ``timeout_s``."""
        process = self._process
        if process is None:
            return None
        if process.returncode is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            return None
