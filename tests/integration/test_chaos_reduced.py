"""The chaos run at reduced size inside ``make test``: replicas killed, broker connections
cut, the API taken away, and still no request lost, no cluster twice, no secret in a log."""

from __future__ import annotations

import pytest

from tests.fixtures.chaos_run import figure, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REDUCED_REQUESTS = 40
# The reduced run takes about a minute on two cores; this bounds a hang, not the run (whose
# own waits are bounded too: start 60 s, settle 120 s, stop 30 s).
TIMEOUT_S = 360


def test_reduced_chaos_run_loses_nothing_duplicates_nothing_and_leaks_no_secret() -> None:
    args = ["--requests", str(REDUCED_REQUESTS)]
    output, report = run_chaos(args, timeout_s=TIMEOUT_S, name="reduced chaos run")
    assert int(figure(output, "replicas killed").split()[0]) >= 3, report
    assert int(figure(output, "connections closed").split()[0]) >= 2, report
