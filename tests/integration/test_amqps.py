"""``amqps://``: the service talks to RabbitMQ over TLS, verifying the broker against a CA and
presenting a client certificate, and refuses a broker its CA did not sign.

A RabbitMQ node of the test's own listens only for TLS, with a CA, a server certificate and a
client certificate made here by the openssl CLI. The options ride in the URL's query, as
aiormq reads them: ``cafile``, ``certfile``, ``keyfile`` (and ``no_verify_ssl=1``, which
this project never uses).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aio_pika
import pytest
from msgspec import Struct

from contracts.events import ConnectionReady
from tests.fixtures.broker import record_events
from tests.fixtures.rabbitmq_node import NodeTls, RabbitNode, server_script
from tests.fixtures.service_process import (
    log_events,
    named,
    service_env,
    start_service,
    stop_service,
    wait_for_log,
)
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import command, final, publish

pytestmark = [pytest.mark.integration]


class Pki(Struct, frozen=True, kw_only=True):
    """The files of a small PKI: a CA, the broker's certificate, a client's, and a CA that
    signed neither."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    assert exe is not None, "the openssl CLI makes the test's certificates"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=provisioner {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, usage: str, alt_names: str | None, cwd: Path) -> None:
    extensions = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if alt_names:
        extensions.append(f"subjectAltName={alt_names}")
    (cwd / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN=provisioner {name}",
        cwd=cwd,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh CA with a server and a client certificate, and an unrelated CA."""
    cwd = tmp_path / "pki"
    cwd.mkdir()
    _ca("ca", cwd)
    _ca("other-ca", cwd)
    _leaf("server", "serverAuth", "DNS:localhost,IP:127.0.0.1", cwd)
    _leaf("client", "clientAuth", None, cwd)
    return Pki(
        ca=cwd / "ca.pem",
        server_cert=cwd / "server.pem",
        server_key=cwd / "server.key",
        client_cert=cwd / "client.pem",
        client_key=cwd / "client.key",
        other_ca=cwd / "other-ca.pem",
    )


@pytest.fixture
async def tls_node(tmp_path: Path, pki: Pki) -> AsyncIterator[RabbitNode]:
    """A node of the test's own that accepts only TLS, with a client certificate."""
    if server_script() is None:
        pytest.skip("rabbitmq-server is not installed here, so no TLS node can be started")
    tls = NodeTls(ca_file=pki.ca, cert_file=pki.server_cert, key_file=pki.server_key)
    node = RabbitNode(tmp_path / "rabbitmq", tls=tls)
    try:
        await node.start()
        yield node
    finally:
        await node.close()


def tls_query(ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    """The URL query that turns on CA verification (and a client certificate)."""
    options = {"cafile": str(ca)}
    if cert is not None and key is not None:
        options |= {"certfile": str(cert), "keyfile": str(key)}
    return urlencode(options)


def unreachable_because(reason: str) -> Callable[[list[dict[str, Any]]], bool]:
    """A log predicate: some ``broker_unreachable`` line gives ``reason`` in its error."""

    def predicate(events: list[dict[str, Any]]) -> bool:
        return any(
            e.get("event") == "broker_unreachable" and reason in str(e.get("error")) for e in events
        )

    return predicate


async def test_service_connects_over_amqps_verifying_the_ca_and_presenting_a_client_certificate(
    tls_node: RabbitNode, pki: Pki, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator_factory()
    url = tls_node.amqps_url(tls_query(pki.ca, pki.client_cert, pki.client_key))
    log_path = tmp_path / "service.log"
    process = await start_service(service_env(url, sim), log_path)
    try:
        await wait_for_log(
            log_path,
            lambda evs: named("service_started")(evs) == 1,
            process=process,
            timeout=60,
            what="service_started over TLS",
        )
        connection = await aio_pika.connect_robust(url)
        try:
            recorder, _ = await record_events(connection)
            await publish(connection, command("tls-pg", "pg"))
            seen = await recorder.wait_for(lambda evs: final(evs, "tls-pg") is not None, 60)
            assert isinstance(final(seen, "tls-pg"), ConnectionReady)
            # The broker's own view: every connection is TLS and shows the client certificate.
            listed = json.loads(
                await tls_node.ctl(
                    "list_connections", "ssl", "peer_cert_subject", "--formatter", "json"
                )
            )
        finally:
            await connection.close()
        assert len(listed) >= 2, listed  # the service's and the test's
        assert all(c["ssl"] is True for c in listed), listed
        assert all("provisioner client" in c["peer_cert_subject"] for c in listed), listed
        assert await stop_service(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logged = log_path.read_text()
    assert "amqps://" in logged and ":guest@" not in logged  # the password never shows


async def test_amqps_refuses_a_broker_the_ca_did_not_sign_and_the_broker_refuses_no_client_cert(
    tls_node: RabbitNode, pki: Pki, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator_factory()
    cases = {
        "wrong-ca": tls_query(pki.other_ca, pki.client_cert, pki.client_key),
        "no-client-cert": tls_query(pki.ca),
    }
    processes = {
        name: await start_service(
            service_env(tls_node.amqps_url(query), sim), tmp_path / f"{name}.log"
        )
        for name, query in cases.items()
    }
    # What the service must say, in its broker_unreachable line, for each case.
    reasons = {
        # the broker's certificate does not verify against the CA in the URL
        "wrong-ca": "CERTIFICATE_VERIFY_FAILED",
        # the broker hangs up on a client without a certificate (some attempts only see the
        # reset that follows the alert, so wait for the attempt that reads it)
        "no-client-cert": "CERTIFICATE_REQUIRED",
    }
    try:
        for name, process in processes.items():
            await wait_for_log(
                tmp_path / f"{name}.log",
                unreachable_because(reasons[name]),
                process=process,
                timeout=30,
                what=f"broker_unreachable naming {reasons[name]} ({name})",
            )
        for name, process in processes.items():
            assert process.returncode is None, f"{name}: waits, does not crash"
            assert named("service_started")(log_events(tmp_path / f"{name}.log")) == 0, name
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
