"""``DigitalOceanClient.scan_clusters`` against the simulator over loopback: the lean reading
agrees with ``list_clusters`` cluster for cluster, through the rate limiter, on a body of
megabytes that arrives in many chunks."""

from __future__ import annotations

import time

import pytest

from contracts.digitalocean import DatabaseClusterCreate
from service import redaction
from service.app import SecretRegisteringApi
from service.digitalocean import DigitalOceanClient, RateLimiter
from service.provisioning.watch import ClusterScanner
from service.redaction import SecretRegistry, scrub_text
from service.simulator import Simulator
from tests.fixtures.simulator import SimulatorFactory

pytestmark = pytest.mark.integration

CLUSTERS = 1500


def fill(simulator: Simulator, count: int) -> None:
    """Clusters straight into the simulated account (half of them stuck in creating)."""
    now = time.monotonic()
    for i in range(count):
        body = DatabaseClusterCreate(
            name=f"scan-{i}",
            engine="pg",
            version="17",
            region="nyc3",
            size="db-s-1vcpu-2gb",
            num_nodes=1,
            tags=["provisioner", f"provisioner:req:{i:032x}"] if i % 5 else ["other"],
        )
        simulator.account.create(body, now, simulator.config)


async def test_scan_agrees_with_the_full_list(simulator_factory: SimulatorFactory) -> None:
    simulator = await simulator_factory(ready_after_s=0.0, stuck_fraction=0.5)
    fill(simulator, CLUSTERS)
    limiter = RateLimiter(per_minute=100)
    async with DigitalOceanClient(
        simulator.base_url, simulator.config.token, limiter=limiter
    ) as do:
        listed = await do.list_clusters("provisioner")
        wanted = {c.id for c in listed[::7]}
        scan = await do.scan_clusters(
            "provisioner",
            tag_prefix="provisioner:req:",
            full=lambda cluster_id, status: cluster_id in wanted and status == "online",
        )
    assert len(listed) == CLUSTERS - CLUSTERS // 5
    assert scan.statuses == {c.id: c.status for c in listed}
    assert scan.tagged == {hash(t): c.id for c in listed for t in c.tags or () if ":req:" in t}
    by_id = {c.id: c for c in listed}
    assert scan.full == {i: by_id[i] for i in wanted if by_id[i].status == "online"}
    assert scan.full  # the check above compared something
    assert simulator.stats().count("GET /v2/databases", 200) == 2


async def test_scan_of_an_untagged_account_is_empty(simulator: Simulator) -> None:
    async with DigitalOceanClient(simulator.base_url, simulator.config.token) as do:
        scan = await do.scan_clusters("provisioner", tag_prefix="provisioner:req:")
    assert (scan.statuses, scan.tagged, scan.full) == ({}, {}, {})


async def test_the_service_api_door_scans_lean_and_registers_what_it_read_in_full(
    simulator_factory: SimulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service hands its watches ``SecretRegisteringApi``, not the client: unless that
    door can scan too, every list reads every cluster of the account in full."""
    monkeypatch.setattr(redaction, "secret_registry", SecretRegistry())
    simulator = await simulator_factory(ready_after_s=0.0, stuck_fraction=0.5)
    fill(simulator, 50)
    async with DigitalOceanClient(simulator.base_url, simulator.config.token) as do:
        api = SecretRegisteringApi(do)
        assert isinstance(api, ClusterScanner)
        listed = await do.list_clusters("provisioner")
        online = [c for c in listed if c.status == "online" and c.connection is not None]
        wanted = {online[0].id}
        scan = await api.scan_clusters(
            "provisioner",
            tag_prefix="provisioner:req:",
            full=lambda cluster_id, status: cluster_id in wanted,
        )
    assert set(scan.full) == wanted
    assert scan.statuses == {c.id: c.status for c in listed}
    password = scan.full[online[0].id].connection.password  # type: ignore[union-attr]
    assert password
    assert scrub_text(f"the password is {password}") == "the password is ***"
