"""The simulator never shows a token or a generated password in a repr."""

from __future__ import annotations

import random

import rich.pretty

from contracts.digitalocean import DatabaseClusterCreate
from service.simulator import SimulatorConfig
from service.simulator.account import Account


def test_config_repr_and_rich_repr_mask_the_token() -> None:
    config = SimulatorConfig(token="dop_v1_realtoken", seed=3)
    for text in (repr(config), str(config), rich.pretty.pretty_repr(config)):
        assert "dop_v1_realtoken" not in text
        assert "token='***'" in text
        assert "seed=3" in text


def test_cluster_record_repr_leaves_the_password_out() -> None:
    account = Account(random.Random(1))
    body = DatabaseClusterCreate(
        name="backend", engine="pg", num_nodes=1, size="db-s-1vcpu-1gb", region="nyc3"
    )
    record = account.create(body, now=0.0, config=SimulatorConfig())
    connection = record.to_api(0.0).connection
    assert connection is not None
    assert connection.password
    password = connection.password
    assert password not in repr(record)
    assert "backend" in repr(record)
