"""The chaos run on a three-node RabbitMQ cluster of the test's own, at reduced size inside
``make test``: two replicas on different nodes, 40 requests with faults, replicas killed, the
node leading the command queue SIGKILLed mid-run and started again, and still no request
lost, no cluster twice, no secret in a log. ``make chaos-cluster`` is the full size."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.rabbitmq_node import server_script

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parents[2]
REDUCED_REQUESTS = 40
REPLICAS = 2
# The cluster takes about half a minute to form and the run about a minute on two cores; this
# bounds a hang, not the run (whose own waits are bounded too: nodes 90 s each, replicas 60 s,
# settle 150 s, stop 30 s).
TIMEOUT_S = 600


def _figure(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (.*)$", output, re.MULTILINE)
    assert match, f"the run did not print {label!r}:\n{output[-3000:]}"
    return match.group(1)


def test_a_node_lost_mid_run_loses_nothing_and_duplicates_nothing() -> None:
    if server_script() is None:
        pytest.skip("rabbitmq-server is not installed here, so no cluster can be started")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.chaos.run",
            "--cluster",
            "--requests",
            str(REDUCED_REQUESTS),
            "--replicas",
            str(REPLICAS),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the run stop its replicas and delete its vhost before it goes.
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=120)
        pytest.fail(f"the reduced cluster chaos run took over {TIMEOUT_S} s:\n{stdout[-4000:]}")
    took = time.monotonic() - started
    output = stdout
    report = f"exit {run.returncode} after {took:.0f} s\n{output[-4000:]}\n{stderr[-2000:]}"
    assert run.returncode == 0, report
    assert "verdict: PASS" in output, report
    # The figures themselves, not only the exit code.
    assert _figure(output, "duplicate clusters") == "0", report
    ready = _figure(output, "connection_ready per good request after dedupe")
    counts = re.match(r"(\d+)/(\d+)", ready)
    assert counts, report
    done, good = counts.groups()
    assert done == good and int(good) > 0, report
    assert "lost: 0, failed: 0" in ready, report
    assert _figure(output, "messages left in queues").startswith("0 "), report
    assert _figure(output, "secrets found in logs").startswith("0 "), report
    assert int(_figure(output, "replicas killed").split()[0]) >= 2, report
    nodes = _figure(output, "broker nodes killed")
    assert nodes.startswith("1 of 3"), report
    # The node leading provisioner.requests was the one killed, and a new leader was elected.
    assert "1 leading the command queue; new leader after" in nodes, report
    assert "new leader after -" not in nodes and "node back after -" not in nodes, report
