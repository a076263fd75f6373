#!/usr/bin/env python
"""The image's HEALTHCHECK: ``GET /healthz`` wherever the service listens.

The address is found, not assumed: the listening TCP sockets of the container's other
processes under this uid, read from ``/proc``. So the check holds with
``PROVISIONER_HTTP_PORT=0`` (any free port), with ``PROVISIONER_HTTP_HOST`` set to one
address, and on the host's network. Exit 0 when one of them answers 200, else 1 with the
reason on stdout (the engine keeps it in the container's health log). Standard library only:
it runs on the image's interpreter, beside the service.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

__all__ = ["check", "listening_addresses", "main", "parse_proc_net_tcp", "probe_address"]

_LISTEN: Final = "0A"  # the TCP_LISTEN state in /proc/net/tcp
_TIMEOUT_S: Final = 3.0
# A socket bound to every address is reached on the loopback of its family.
_WILDCARD_TO_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - read, not bound


def _decode_address(hex_address: str) -> str:
    """The text form of an address as /proc/net/tcp{,6} writes it: 32-bit words, each in
    host byte order (little-endian on every platform the image is built for)."""
    raw = bytes.fromhex(hex_address)
    host_order = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(host_order))


def parse_proc_net_tcp(text: str) -> dict[int, tuple[str, int]]:
    """Listening sockets in a /proc/net/tcp or tcp6 table: inode -> (address, port)."""
    sockets: dict[int, tuple[str, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        hex_address, hex_port = fields[1].split(":")
        sockets[int(fields[9])] = (_decode_address(hex_address), int(hex_port, 16))
    return sockets


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def listening_addresses(pids: Iterable[int]) -> Iterator[tuple[str, int]]:
    """(address, port) of every TCP socket the given processes listen on."""
    for pid in pids:
        try:
            inodes = _socket_inodes(pid)
            table: dict[int, tuple[str, int]] = {}
            for name in ("tcp", "tcp6"):
                path = Path(f"/proc/{pid}/net/{name}")
                if path.exists():
                    table.update(parse_proc_net_tcp(path.read_text()))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue  # exited, or not ours
        for inode in sorted(inodes & table.keys()):
            yield table[inode]


def _other_processes_of_this_user() -> list[int]:
    me, uid = os.getpid(), os.getuid()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return sorted(pids)


def probe_address(address: str, port: int) -> str | None:
    """None when ``GET /healthz`` answers 200 there, else what went wrong."""
    host = _WILDCARD_TO_LOOPBACK.get(address, address)
    connection = http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    finally:
        connection.close()
    return None if status == 200 else f"{host}:{port}: /healthz answered {status}"


def check(pids: Iterable[int]) -> tuple[bool, str]:
    """Whether one listening socket of ``pids`` answers ``/healthz``, and what was seen."""
    problems = []
    for address, port in dict.fromkeys(listening_addresses(pids)):
        problem = probe_address(address, port)
        if problem is None:
            return True, f"healthy: {address}:{port}/healthz answered 200"
        problems.append(problem)
    if not problems:
        return False, "unhealthy: the service listens on no TCP port (yet)"
    return False, "unhealthy: " + "; ".join(problems)


def main() -> int:
    healthy, report = check(_other_processes_of_this_user())
    print(report)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
