"""The image's HEALTHCHECK finds where the service listens (from /proc) and asks /healthz
there: real sockets of this test process, a real HTTP server on loopback."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.container_healthcheck import check, listening_addresses, parse_proc_net_tcp

# /proc/net/tcp and tcp6 as Linux writes them: a socket listening on 127.0.0.1:8080, an
# established one, and one listening on [::]:9090.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 4242 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 10001        0 4243 1 0 20 4 30 10 -1
"""  # noqa: E501
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 5151 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 10001        0 5152 1 0 100 0 0 10 0
"""  # noqa: E501


def test_listening_sockets_are_read_from_the_kernels_tables() -> None:
    assert parse_proc_net_tcp(PROC_NET_TCP) == {4242: ("127.0.0.1", 8080)}
    assert parse_proc_net_tcp(PROC_NET_TCP6) == {5151: ("::", 9090), 5152: ("::1", 80)}


def test_a_socket_this_process_listens_on_is_found() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert ("127.0.0.1", port) in set(listening_addresses([os.getpid()]))
    assert ("127.0.0.1", port) not in set(listening_addresses([os.getpid()]))


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(host: str, status: int) -> Iterator[int]:
    handler = type("Health", (_Health,), {"status": status})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
    with server_class((host, 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join()


@pytest.fixture
def healthy_on_every_address() -> Iterator[int]:
    """An HTTP server on 0.0.0.0 (as the service listens by default) answering 200."""
    yield from _serve("0.0.0.0", 200)  # noqa: S104 - the wildcard is what is tested


@pytest.fixture
def unhealthy_on_loopback() -> Iterator[int]:
    yield from _serve("127.0.0.1", 503)


def test_a_server_on_every_address_is_asked_on_loopback_and_passes(
    healthy_on_every_address: int,
) -> None:
    healthy, report = check([os.getpid()])
    assert healthy, report
    assert f"0.0.0.0:{healthy_on_every_address}/healthz answered 200" in report


def test_a_server_answering_503_fails_the_check_with_its_answer(unhealthy_on_loopback: int) -> None:
    healthy, report = check([os.getpid()])
    assert not healthy
    assert f"127.0.0.1:{unhealthy_on_loopback}: /healthz answered 503" in report


def test_no_listening_service_fails_the_check_and_says_so() -> None:
    healthy, report = check([])
    assert not healthy
    assert report == "unhealthy: the service listens on no TCP port (yet)"
