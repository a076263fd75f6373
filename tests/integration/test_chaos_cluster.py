"""The chaos run on a three-node RabbitMQ cluster of the test's own, at reduced size inside
``make test``: two replicas on different nodes, 40 requests with faults, replicas killed, the
node leading the command queue SIGKILLed mid-run and started again, and still no request
lost, no cluster twice, no secret in a log. ``make chaos-cluster`` is the full size."""

from __future__ import annotations

import pytest

from tests.fixtures.chaos_run import figure, run_chaos
from tests.fixtures.rabbitmq_node import server_script

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REDUCED_REQUESTS = 40
REPLICAS = 2
# The cluster takes about half a minute to form and the run about a minute on two cores; this
# bounds a hang, not the run (whose own waits are bounded too: nodes 90 s each, replicas 60 s,
# settle 150 s, stop 30 s).
TIMEOUT_S = 600


def test_a_node_lost_mid_run_loses_nothing_and_duplicates_nothing() -> None:
    if server_script() is None:
        pytest.skip("rabbitmq-server is not installed here, so no cluster can be started")
    args = ["--cluster", "--requests", str(REDUCED_REQUESTS), "--replicas", str(REPLICAS)]
    output, report = run_chaos(args, timeout_s=TIMEOUT_S, name="reduced cluster chaos run")
    assert int(figure(output, "replicas killed").split()[0]) >= 2, report
    nodes = figure(output, "broker nodes killed")
    assert nodes.startswith("1 of 3"), report
    # The node leading provisioner.requests was the one killed, and a new leader was elected.
    assert "1 leading the command queue; new leader after" in nodes, report
    assert "new leader after -" not in nodes and "node back after -" not in nodes, report
