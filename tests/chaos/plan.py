"""The requests of a chaos run: a seeded mix of engines, users, bad input and reply queues.

Every request is known before the run starts, with what it must end as: a good one as
exactly one cluster and one ``connection_ready``, a bad one as a ``rejected`` event and a
parked message. The verdict compares what happened with this plan.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Final

from msgspec import Struct

from contracts.events import event_id
from tests.fixtures.engines import ENGINE_SAMPLES

__all__ = ["BAD_KINDS", "ENGINES", "PlannedRequest", "build_plan"]

ENGINES: Final = ("pg", "mysql", "valkey", "mongodb", "kafka", "opensearch", "advanced_pg")

# Valid clusters per engine, the same as the integration tests use; ``users``/``db_names``
# are kept only for requests that ask for them.
_CLUSTERS: Final[dict[str, dict[str, Any]]] = ENGINE_SAMPLES

# Bad input the decoder refuses whatever the API says. Checks that need the options
# (an unknown region) are left out: they fail open while the API is away, by design.
BAD_KINDS: Final = (
    "invalid_json",
    "unknown_field",
    "wrong_type",
    "read_only_field",
    "engine_rule",
    "content_type",
    "node_count",
    "missing_request_id",
)


class PlannedRequest(Struct, frozen=True, kw_only=True):
    """One message the run publishes, and what it must end as."""

    index: int
    request_id: str | None
    """None only where the body carries no readable request id."""
    kind: str
    """The engine of a good request; the defect of a bad one (one of ``BAD_KINDS``)."""
    good: bool
    body: bytes
    content_type: str = "application/json"
    reply_to: str | None = None
    correlation_id: str | None = None
    resend: bool = False
    """Published twice, as a producer that retries would."""
    cluster_name: str | None = None
    users: tuple[str, ...] = ()
    db_names: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """sha256 of the body: how a parked message is matched to its request."""
        return hashlib.sha256(self.body).hexdigest()

    def rejected_ids(self, producer: str) -> set[str]:
        """The id the ``rejected`` event of this body, sent by ``producer``, may carry (with
        or without a readable request id)."""
        transition = f"rejected:{self.digest}"
        return {
            event_id(self.request_id or "", transition, producer),
            event_id("", transition, producer),
        }


def _good(index: int, rng: random.Random, run_tag: str) -> dict[str, Any]:
    engine = ENGINES[index % len(ENGINES)]
    cluster: dict[str, Any] = {
        "name": f"chaos-{run_tag}-{index:04d}",
        "engine": engine,
        "region": "nyc3",
        "tags": ["chaos"],
    }
    sample = dict(_CLUSTERS[engine])
    if rng.random() < 0.5:  # half of them ask for users and databases
        sample.pop("users", None)
        sample.pop("db_names", None)
    cluster.update(sample)
    return {
        "request_id": f"chaos-{run_tag}-{index:04d}",
        "cluster": cluster,
        "metadata": {"chaos_index": str(index)},
    }


def _bad(index: int, kind: str, run_tag: str) -> tuple[str | None, bytes, str]:
    """(request id, body, content type) of one bad message."""
    rid = f"chaos-{run_tag}-{index:04d}-bad"
    base = {
        "request_id": rid,
        "cluster": {
            "name": f"chaos-{run_tag}-{index:04d}-bad",
            "engine": "pg",
            "version": "17",
            "region": "nyc3",
            "size": "db-s-1vcpu-2gb",
            "num_nodes": 1,
        },
    }
    cluster = base["cluster"]
    assert isinstance(cluster, dict)
    content_type = "application/json"
    if kind == "invalid_json":
        return None, f'{{"request_id": "{rid}", "cluster": {{"name": '.encode(), content_type
    if kind == "unknown_field":
        cluster["colour"] = "blue"
    elif kind == "wrong_type":
        cluster["num_nodes"] = "three"
    elif kind == "read_only_field":
        cluster["status"] = "online"
    elif kind == "engine_rule":
        cluster.update(engine="valkey", version="8", users=[{"name": "app"}])
    elif kind == "content_type":
        content_type = "text/plain"
    elif kind == "node_count":
        cluster.update(engine="advanced_pg", version="18", size="gd-2vcpu-8gb", num_nodes=5)
    elif kind == "missing_request_id":
        del base["request_id"]
        rid = ""
    return (rid or None), json.dumps(base).encode(), content_type


def build_plan(
    requests: int, seed: int, reply_queues: list[str], run_tag: str
) -> list[PlannedRequest]:
    """``requests`` messages: about one in ten bad (every kind in turn), one in seven with
    ``reply_to``, one good one in twenty published twice."""
    rng = random.Random(seed)
    plan: list[PlannedRequest] = []
    bad_seen = 0
    for index in range(requests):
        reply_to = reply_queues[index % len(reply_queues)] if index % 7 == 3 else None
        correlation_id = f"corr-{run_tag}-{index:04d}" if reply_to else None
        if index % 10 == 7:
            kind = BAD_KINDS[bad_seen % len(BAD_KINDS)]
            bad_seen += 1
            rid, body, content_type = _bad(index, kind, run_tag)
            plan.append(
                PlannedRequest(
                    index=index,
                    request_id=rid,
                    kind=kind,
                    good=False,
                    body=body,
                    content_type=content_type,
                    reply_to=reply_to,
                    correlation_id=correlation_id,
                    cluster_name=f"chaos-{run_tag}-{index:04d}-bad",
                )
            )
            continue
        command = _good(index, rng, run_tag)
        cluster = command["cluster"]
        plan.append(
            PlannedRequest(
                index=index,
                request_id=command["request_id"],
                kind=cluster["engine"],
                good=True,
                body=json.dumps(command).encode(),
                reply_to=reply_to,
                correlation_id=correlation_id,
                resend=index % 20 == 11,
                cluster_name=cluster["name"],
                users=tuple(u["name"] for u in cluster.get("users", [])),
                db_names=tuple(cluster.get("db_names", [])),
            )
        )
    rng.shuffle(plan)  # engines, bad input and reply queues interleaved in time
    return plan
