"""A RabbitMQ node of a test's own, which the test may stop and start at will.

The machine's main broker (127.0.0.1:5672, the node named in /etc/rabbitmq/rabbitmq-env.conf)
is never touched: this node has its own name, AMQP port, distribution port, epmd port, data
and log directories, Erlang cookie (``HOME``) and configuration file, all under a directory
the test owns, and it ignores the system's ``rabbitmq-env.conf``. It runs the broker's own
start script (not the distribution's ``su rabbitmq`` wrapper, which would write the main
node's startup log) in a process group of its own, so cleanup can end exactly what it started.

Optionally it listens for AMQP over TLS too, with the files of :class:`NodeTls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Final

from msgspec import Struct

__all__ = ["NodeError", "NodeTls", "RabbitNode", "free_port", "server_script"]

# The broker's start script as packaged by Debian/Ubuntu (the one in PATH there is a
# wrapper that switches to the rabbitmq user), then whatever PATH offers (generic unix
# tarball, Homebrew, the official image).
_SCRIPT_CANDIDATES: Final = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
STARTED_MARKER: Final = "Server startup complete"
# Erlang distribution (how rabbitmqctl talks to the node) on loopback only.
LOOPBACK_DISTRIBUTION: Final = "-kernel inet_dist_use_interface {127,0,0,1}"


class NodeError(RuntimeError):
    """The node did not start or stop; the message quotes the end of its log."""


class NodeTls(Struct, frozen=True, kw_only=True):
    """The files of the node's TLS listener."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_client_cert: bool = True
    plain_listener: bool = False
    """Also listen for plain AMQP; off by default, so TLS is the only way in."""


def server_script() -> str | None:
    """The ``rabbitmq-server`` script that runs a node as the current user, if installed."""
    for candidate in _SCRIPT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    text = Path(found).read_bytes()[:4096]
    return None if b"su rabbitmq" in text else found


def free_port() -> int:
    """A TCP port nothing listens on right now (on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    for _ in range(100):
        port = free_port()
        # RabbitMQ's CLI tools take 35672-35682 for themselves; the main node uses 25672.
        if port not in ports and not 25672 <= port <= 35682:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise NodeError("no free ports on loopback")


class RabbitNode:
    """One RabbitMQ node under ``root``; ``start()``/``stop()`` any number of times,
    ``close()`` at the end (idempotent; also after a failure)."""

    def __init__(
        self,
        root: Path,
        *,
        tls: NodeTls | None = None,
        name: str | None = None,
        epmd_port: int | None = None,
        cookie: str | None = None,
        advanced: str | None = None,
        dist_address: str | None = None,
        extra_erl_args: str = "",
    ) -> None:
        """``name``, ``epmd_port`` and ``cookie`` are for the nodes of a cluster
        (``tests.chaos.rabbitmq_cluster``), which must share an epmd and a cookie;
        ``advanced`` is the text of an ``advanced.config`` (Erlang terms).

        ``dist_address`` (a loopback address such as ``127.0.0.12``) gives the node's Erlang
        distribution an address of its own: it listens there and connects to other nodes
        from there, so a firewall rule on the pair of addresses cuts exactly the link
        between two nodes (a partition); ``name`` must then be a long name
        ``NAME@ADDRESS``. ``extra_erl_args`` are more ``-kernel``/``-rabbit`` options."""
        script = server_script()
        if script is None:
            raise NodeError("rabbitmq-server is not installed (`make broker` installs it)")
        self._script = script
        self.root = root
        self.tls = tls
        self.name = name or f"provisioner-test-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_port, self.dist_port, own_epmd, self.amqps_port = _distinct_ports(4)
        self.epmd_port = epmd_port or own_epmd
        self.own_epmd = epmd_port is None
        self._process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.dist_address = dist_address
        self._extra_erl_args = extra_erl_args
        for sub in ("mnesia", "log", "home"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if cookie is not None:
            cookie_file = root / "home" / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("# this node ignores the system's env file\n")
        (root / "rabbitmq.conf").write_text(self._config())
        self._advanced = advanced
        if advanced is not None:
            (root / "advanced.config").write_text(advanced)

    def _config(self) -> str:
        plain = self.tls is None or self.tls.plain_listener
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}"
            if plain
            else "listeners.tcp = none",
            # A test machine's disk may be fuller than the 50 MB default cares about.
            "disk_free_limit.absolute = 1MB",
            "log.console = false",
            "log.file.level = info",
        ]
        if self.tls is not None:
            lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.amqps_port}",
                f"ssl_options.cacertfile = {self.tls.ca_file}",
                f"ssl_options.certfile = {self.tls.cert_file}",
                f"ssl_options.keyfile = {self.tls.key_file}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = "
                + ("true" if self.tls.require_client_cert else "false"),
            ]
        return "\n".join(lines) + "\n"

    @property
    def log_file(self) -> Path:
        """The node's own log."""
        return self.root / "log" / f"{self.name}.log"

    @property
    def running(self) -> bool:
        """Whether the node's process is alive."""
        return self._process is not None and self._process.returncode is None

    def url(self, vhost: str = "") -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/VHOST``."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    def amqps_url(self, query: str, vhost: str = "") -> str:
        """``amqps://guest:guest@127.0.0.1:TLS_PORT/VHOST?QUERY`` (the TLS listener)."""
        return f"amqps://guest:guest@127.0.0.1:{self.amqps_port}/{vhost}?{query}"

    def _env(self) -> dict[str, str]:
        root = self.root
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(root / "home"),  # the Erlang cookie lives here, not in ~root
                "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
                "RABBITMQ_LOG_BASE": str(root / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
                "RABBITMQ_PID_FILE": str(root / "node.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": self._erl_args(),
                "ERL_EPMD_ADDRESS": self.epmd_addresses(),
                "ERL_EPMD_PORT": str(self.epmd_port),
            }
        )
        if self.dist_address is not None:
            env["RABBITMQ_USE_LONGNAME"] = "true"
        if self._advanced is not None:
            env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(root / "advanced.config")
        return env

    def epmd_addresses(self) -> str:
        """Where the node's epmd listens (``ERL_EPMD_ADDRESS``): loopback, and the node's
        own distribution address if it has one (other nodes look it up there)."""
        if self.dist_address is None:
            return "127.0.0.1"
        return f"127.0.0.1,{self.dist_address}"

    def _erl_args(self) -> str:
        if self.dist_address is None:
            args = LOOPBACK_DISTRIBUTION
        else:
            erl_ip = "{" + self.dist_address.replace(".", ",") + "}"
            args = (
                f"-kernel inet_dist_use_interface {erl_ip}"
                f" -kernel inet_dist_connect_options [{{ip,{erl_ip}}}]"
            )
        return f"{args} {self._extra_erl_args}".strip()

    async def ctl(self, *args: str, timeout_s: float = 60.0, tool: str = "rabbitmqctl") -> str:
        """``rabbitmqctl -q ARGS`` (or another of the broker's CLI tools, such as
        ``rabbitmq-upgrade``) against this node (with its cookie); standard output."""
        ctl = str(Path(self._script).with_name(tool))
        if not os.access(ctl, os.X_OK):
            raise NodeError(f"no {tool} next to {self._script}")
        process = await asyncio.create_subprocess_exec(
            ctl,
            "-q",
            "-n",
            self.name,
            *args,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise NodeError(f"{tool} {args[0]} did not answer in {timeout_s:g} s") from None
        if process.returncode != 0:
            raise NodeError(f"{tool} {args[0]} failed: {err.decode(errors='replace')[:500]}")
        return out.decode(errors="replace")

    def _log_tail(self, lines: int = 15) -> str:
        texts = []
        for path in (self.log_file, self.root / "console.out"):
            if path.exists():
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    async def start(self, timeout_s: float = 90.0) -> None:
        """Start the node and wait until it accepts connections."""
        if self.running:
            raise NodeError(f"{self.name} is already running")
        # Counted from before the start: ``start_app`` (joining a cluster) logs it too.
        seen = self._log_text().count(STARTED_MARKER)
        with (self.root / "console.out").open("ab") as console:
            self._process = await asyncio.create_subprocess_exec(
                self._script,
                env=self._env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cleanup ends it and only it
            )
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while self._log_text().count(STARTED_MARKER) <= seen:
            if not self.running:
                raise NodeError(f"{self.name} exited while starting:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise NodeError(
                    f"{self.name} did not start in {timeout_s:g} s:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.2)

    def _log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    async def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the node the way an operator would (SIGTERM: a clean broker shutdown)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            self._kill_group()
            await process.wait()
            raise NodeError(f"{self.name} did not stop in {timeout_s:g} s") from None

    async def kill(self) -> None:
        """SIGKILL the node (no goodbye: a crashed machine) and wait until it is gone."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._kill_group()
        await process.wait()

    def _kill_group(self) -> None:
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Stop the node (forcibly if it will not go) and the epmd it started."""
        try:
            await self.stop(timeout_s=30.0)
        except NodeError:
            pass
        finally:
            self._kill_group()
            epmd = shutil.which("epmd")
            if epmd is not None and self.own_epmd:
                # Only the epmd on this node's own port, which this node's start launched.
                killer = await asyncio.create_subprocess_exec(
                    epmd,
                    "-port",
                    str(self.epmd_port),
                    "-kill",
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(killer.wait(), 10)
