"""``PROVISIONER_POLICY_FILE``: what each producer may ask for, and the errors a broken file
gives at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.commands import ProvisionDatabase
from service.provisioning.policy import Policy, PolicyError, Rules, load_policy


def cmd(**cluster: Any) -> ProvisionDatabase:
    base: dict[str, Any] = {
        "name": "orders",
        "engine": "pg",
        "region": "nyc3",
        "size": "db-s-1vcpu-2gb",
        "num_nodes": 1,
    }
    return msgspec.convert({"request_id": "r", "cluster": base | cluster}, ProvisionDatabase)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def paths(
    policy: Policy, producer: str, command: ProvisionDatabase, reply_to: str | None = None
) -> list[str]:
    return [e.path for e in policy.check(producer, command, reply_to)]


# --- the default: everyone may provision, producers kept apart ------------------------------


def test_without_a_file_every_producer_may_provision_anything() -> None:
    policy = load_policy(None)
    assert policy.check("orders", cmd(engine="mongodb", num_nodes=3, size="x"), None) == []


@pytest.mark.parametrize(
    ("reply_to", "allowed"),
    [
        ("amq.rabbitmq.reply-to", True),
        ("amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AABrxwAAAABrESWy.key", True),
        ("orders.replies", True),
        ("orders.", True),
        ("orders", False),
        ("orders-x.replies", False),
        ("billing.replies", False),
        ("events.audit.status", False),
        ("provisioner.watch", False),
        ("amq.rabbitmq.reply-toX", False),
    ],
)
def test_replies_go_to_direct_reply_to_or_the_producers_own_queues(
    reply_to: str, allowed: bool
) -> None:
    policy = Policy()
    assert policy.reply_allowed("orders", reply_to) is allowed
    errors = policy.check("orders", cmd(), reply_to)
    assert [e.path for e in errors] == ([] if allowed else ["properties.reply_to"])


def test_a_producer_name_is_matched_literally_in_reply_patterns() -> None:
    # A name with pattern characters must not widen its own pattern.
    policy = Policy()
    assert policy.reply_allowed("a*", "a*.replies")
    assert not policy.reply_allowed("a*", "abc.replies")
    assert not policy.reply_allowed("a.b", "aXb.replies")


# --- rules ----------------------------------------------------------------------------------


def test_a_producers_table_overrides_only_what_it_sets() -> None:
    policy = Policy(
        {
            "*": Rules(engines=["pg"], max_nodes=2),
            "orders": Rules(engines=["pg", "valkey"]),
        }
    )
    orders, other = policy.rules_for("orders"), policy.rules_for("billing")
    assert orders.engines == ["pg", "valkey"] and orders.max_nodes == 2
    assert other.engines == ["pg"] and other.max_nodes == 2
    assert orders.restore is True and orders.reply_to == other.reply_to


def test_every_rule_names_its_field_and_the_rule() -> None:
    policy = Policy(
        {
            "orders": Rules(
                engines=["valkey"],
                regions=["ams3"],
                sizes=["db-s-1vcpu-1*"],
                max_nodes=1,
                project_ids=["p-1"],
                private_network_uuids=["v-1"],
                restore=False,
                reply_to=["orders.replies"],
            )
        }
    )
    command = cmd(num_nodes=2, backup_restore={"database_name": "src"})
    errors = policy.check("orders", command, "orders.other")
    assert [e.path for e in errors] == [
        "$.cluster.engine",
        "$.cluster.region",
        "$.cluster.size",
        "$.cluster.num_nodes",
        "$.cluster.project_id",
        "$.cluster.private_network_uuid",
        "$.cluster.backup_restore",
        "properties.reply_to",
    ]
    messages = [e.message for e in errors]
    assert "may not use engine 'pg'; allowed: valkey" in messages[0]
    assert "allowed: db-s-1vcpu-1*" in messages[2]
    assert "at most 1 nodes, not 2" in messages[3]
    assert messages[4].startswith("required:")  # no project_id given where one is required
    assert "may not restore" in messages[6]
    assert "allowed: orders.replies" in messages[7]


def test_cluster_names_follow_the_producers_patterns() -> None:
    policy = Policy({"*": Rules(names=["{producer}-*", "shared-?"])})
    assert paths(policy, "orders", cmd(name="orders-db")) == []
    assert paths(policy, "orders", cmd(name="shared-1")) == []
    (error,) = policy.check("orders", cmd(name="billing-db"), None)
    assert error.path == "$.cluster.name"
    assert "allowed: orders-*, shared-?" in error.message


def test_storage_and_autoscale_can_be_bounded() -> None:
    policy = Policy({"*": Rules(max_storage_size_mib=20480, autoscale=False)})
    assert paths(policy, "x", cmd(storage_size_mib=20480)) == []
    autoscale = {"storage": {"enabled": True, "threshold": 80, "increment_gib": 10}}
    command = cmd(storage_size_mib=30720, autoscale=autoscale)
    assert paths(policy, "x", command) == ["$.cluster.storage_size_mib", "$.cluster.autoscale"]


def test_a_listed_project_and_vpc_pass() -> None:
    policy = Policy({"*": Rules(project_ids=["p-1"], private_network_uuids=["v-1"])})
    command = cmd(project_id="p-1", private_network_uuid="")
    assert paths(policy, "orders", command) == ["$.cluster.private_network_uuid"]


def test_size_patterns_are_shell_style() -> None:
    policy = Policy({"*": Rules(sizes=["db-s-*", "gd-?vcpu-8gb"])})
    assert paths(policy, "x", cmd(size="db-s-2vcpu-4gb")) == []
    assert paths(policy, "x", cmd(size="gd-2vcpu-8gb")) == []
    assert paths(policy, "x", cmd(size="so1_5-2vcpu-16gb")) == ["$.cluster.size"]


def test_a_producer_that_may_not_provision_is_refused_whole() -> None:
    policy = Policy({"reporting": Rules(provision=False)})
    (error,) = policy.check("reporting", cmd(), None)
    assert error.path == "$" and "may not provision" in error.message
    assert policy.check("orders", cmd(), None) == []


# --- the file ---------------------------------------------------------------------------------


def test_the_file_is_read_as_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
["*"]
max_nodes = 3
reply_to = ["amq.rabbitmq.reply-to", "replies.{producer}.*"]

[orders-producer]
engines = ["pg"]
""",
    )
    policy = load_policy(path)
    assert policy.rules_for("orders-producer").engines == ["pg"]
    assert policy.rules_for("orders-producer").max_nodes == 3
    assert policy.reply_allowed("billing", "replies.billing.x")
    assert not policy.reply_allowed("billing", "billing.x")
    assert str(path) in policy.source


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[orders]\nmax_nodes = 'many'\n", "[orders] max_nodes: Expected `int"),
        ("[orders]\nmax_node = 3\n", "[orders]: Object contains unknown field `max_node`"),
        ('["*"]\nengines = ["postgres"]\n', "[*] engines[0]: Invalid enum value 'postgres'"),
        ("[orders]\nmax_nodes = 0\n", "[orders] max_nodes: Expected `int` >= 1"),
        ("max_nodes = 3\n", "'max_nodes' must be a table ([max_nodes])"),
        ("[svc.orders]\nmax_nodes = 3\n", 'is written with quotes: ["svc.orders"]'),
        ("[orders\n", "not valid TOML"),
    ],
)
def test_a_broken_file_names_the_file_the_table_and_the_field(
    text: str, words: str, tmp_path: Path
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "absent.toml")
