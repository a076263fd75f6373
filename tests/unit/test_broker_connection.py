"""The address list of ``PROVISIONER_AMQP_URL``: the order nodes are tried in, the move to the
next node after each failure, and the backoff once every node has failed."""

from __future__ import annotations

import random

import pytest
from yarl import URL

from service.broker.connection import ClusterConnection, ordered, redact_url, split_urls

NODES = [f"amqp://svc:s3cret@rabbit-{i}:5672/prod" for i in (1, 2, 3)]


def test_a_comma_separated_value_splits_into_its_addresses() -> None:
    assert split_urls(" a , b,,c ") == ["a", "b", "c"]
    assert split_urls(NODES[0]) == [NODES[0]]


def test_listed_keeps_the_order_and_shuffle_spreads_replicas_over_the_nodes() -> None:
    assert [u.host for u in ordered(NODES, "listed")] == ["rabbit-1", "rabbit-2", "rabbit-3"]
    firsts = {ordered(NODES, "shuffle", random.Random(seed))[0].host for seed in range(30)}
    assert firsts == {"rabbit-1", "rabbit-2", "rabbit-3"}
    with pytest.raises(ValueError, match="no broker address"):
        ordered([], "listed")


def test_redaction_hides_every_password_of_a_list() -> None:
    redacted = redact_url(",".join(NODES))
    assert "s3cret" not in redacted
    assert redacted.count("svc:***@") == 3


async def test_each_failure_moves_to_the_next_node_and_backoff_grows_per_round() -> None:
    connection = ClusterConnection([URL(u) for u in NODES], reconnect_interval=1)
    assert connection.node == "rabbit-1:5672"
    seen = []
    pauses = []
    for _ in range(7):
        connection._advance()
        seen.append(connection.url.host)
        pauses.append(connection.reconnect_interval)
    assert seen == [
        "rabbit-2",
        "rabbit-3",
        "rabbit-1",
        "rabbit-2",
        "rabbit-3",
        "rabbit-1",
        "rabbit-2",
    ]
    # A round of three at about 1 s (jittered ±25 %), then about 2 s, then about 4 s.
    assert all(0.75 <= p <= 1.25 for p in pauses[:3])
    assert all(1.5 <= p <= 2.5 for p in pauses[3:6])
    assert 3.0 <= pauses[6] <= 5.0
    assert connection.switches == 7


async def test_backoff_is_capped() -> None:
    connection = ClusterConnection([URL(NODES[0])], reconnect_interval=1, backoff_max_s=5)
    for _ in range(20):
        connection._advance()
    assert connection.url.host == "rabbit-1"
    assert connection.reconnect_interval <= 5 * 1.25
