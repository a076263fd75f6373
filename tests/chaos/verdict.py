"""The verdict of a chaos run: what happened, compared with the plan, as printed figures.

Counted the way a Jepsen-style checker counts messages, here for clusters and events:
lost (a good request that never reached ``connection_ready``), duplicated (a second cluster
for one request) and unexpected (an event, a cluster or an answer nobody asked for).
Pure functions over what the run recorded, so the arithmetic is easy to read and to check.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from typing import Any, Final

from msgspec import Struct, field

from service.provisioning.commands import request_tag
from tests.chaos.plan import PlannedRequest
from tests.fixtures.rabbitmqctl import QueueDepth

__all__ = [
    "ChaosCounts",
    "ClusterSeen",
    "Evidence",
    "ReplyMessage",
    "Verdict",
    "judge",
]

TERMINAL: Final = frozenset(
    {
        "database.cluster.connection_ready",
        "database.cluster.failed",
        "database.cluster.rejected",
    }
)
READY: Final = "database.cluster.connection_ready"
REJECTED: Final = "database.cluster.rejected"
FAILED: Final = "database.cluster.failed"


class ChaosCounts(Struct, kw_only=True):
    """What the run did to the system."""

    replicas: int
    kills: int = 0
    restarts: int = 0
    restart_failures: int = 0
    restarts_cut_short: int = 0
    """Restarts the chaos ended itself: the replica was SIGKILLed again while starting."""
    connection_cuts: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    slow_phases: int = 0
    resends: int = 0
    publish_retries: int = 0
    # On a cluster (``--cluster``) only.
    nodes: int = 0
    node_kills: int = 0
    node_kills_of_leader: int = 0
    node_restart_failures: int = 0
    leader_moves: int = 0
    leader_elections_s: list[float] = field(default_factory=list)
    node_restarts_s: list[float] = field(default_factory=list)
    partitions: int = 0
    """Nodes cut off from the others by firewall rules, then let back."""
    partition_skipped: str = ""
    """Why the run could not cut a node off, if it could not."""
    partition_failures: int = 0
    partitions_noticed_s: list[float] = field(default_factory=list)
    """From the cut until the other nodes no longer listed the node as running."""
    partition_elections_s: list[float] = field(default_factory=list)
    """From the cut until the command queue had a leader on the other side."""
    partitions_back_s: list[float] = field(default_factory=list)
    """From the heal until the cluster listed every node running again."""


class ClusterSeen(Struct, frozen=True, kw_only=True):
    """A cluster in the simulated account at the end (no credentials)."""

    id: str
    name: str
    status: str
    tags: tuple[str, ...]
    users: tuple[str, ...]
    db_names: tuple[str, ...]
    password_digests: tuple[tuple[str, str], ...] = ()
    """(user, digest) of the passwords that work now (``subscriber.password_digest``)."""


class ReplyMessage(Struct, frozen=True, kw_only=True):
    """An event found on a reply queue."""

    queue: str
    correlation_id: str | None
    event_id: str
    type: str
    request_id: str | None


class Evidence(Struct, kw_only=True):
    """Everything the run recorded."""

    plan: list[PlannedRequest]
    events: list[dict[str, Any]]
    clusters: list[ClusterSeen]
    parked_digests: list[str]
    dead_letters: list[str]
    """One description per message found in the dead-letter queue at the end."""
    replies: list[ReplyMessage]
    depths: dict[str, QueueDepth]
    service_queues: list[str]
    """The queues that must be empty: requests, watch, delay, retry and dead-letter."""
    managed_tag: str
    producer: str
    counts: ChaosCounts
    faults: dict[str, int]
    rate_limited: int
    exit_codes: dict[str, int | None]
    secrets_checked: int
    secrets_found: dict[str, int]
    """Log file name -> distinct secrets found in it."""
    log_bytes: int
    log_files: int
    handlers_stopped: int = 0
    """Handlers the replicas cancelled because the channel of their message was lost."""


class Verdict(Struct, kw_only=True):
    """The printed figures and every broken promise."""

    lines: list[str]
    failures: list[str]

    @property
    def passed(self) -> bool:
        """True when nothing was lost, duplicated or unexpected."""
        return not self.failures


def _dedupe(events: Iterable[dict[str, Any]]) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    copies = 0
    for line in events:
        key = (str(line.get("source")), str(line.get("id")))
        if key in unique:
            copies += 1
        else:
            unique[key] = line
    return unique, copies


def _sample(items: Iterable[str], limit: int = 5) -> str:
    listed = sorted(items)
    more = f" (+{len(listed) - limit} more)" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


def judge(evidence: Evidence) -> Verdict:
    """Compare the run with its plan."""
    plan = evidence.plan
    good = [p for p in plan if p.good]
    bad = [p for p in plan if not p.good]
    good_ids = {p.request_id for p in good if p.request_id}
    failures: list[str] = []

    undecodable = [e for e in evidence.events if "undecodable" in e]
    if undecodable:
        failures.append(f"{len(undecodable)} events the subscriber could not decode")
    unique, copies = _dedupe(e for e in evidence.events if "undecodable" not in e)
    by_request: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for line in unique.values():
        by_request[line.get("request_id")].append(line)

    # --- clusters: one per good request, none for bad input or strangers -------------------
    tag_to_request = {
        request_tag(evidence.managed_tag, evidence.producer, rid): rid for rid in good_ids
    }
    clusters_of: dict[str, list[ClusterSeen]] = defaultdict(list)
    strangers: list[ClusterSeen] = []
    for cluster in evidence.clusters:
        owners = [tag_to_request[t] for t in cluster.tags if t in tag_to_request]
        if owners:
            clusters_of[owners[0]].append(cluster)
        else:
            strangers.append(cluster)
    duplicates = sum(len(cs) - 1 for cs in clusters_of.values() if len(cs) > 1)
    if duplicates:
        dup_ids = [rid for rid, cs in clusters_of.items() if len(cs) > 1]
        failures.append(f"{duplicates} duplicate clusters (requests {_sample(dup_ids)})")
    if strangers:
        failures.append(
            f"{len(strangers)} clusters that no good request asked for "
            f"({_sample(c.name for c in strangers)})"
        )
    without_cluster = [rid for rid in good_ids if rid not in clusters_of]
    if without_cluster:
        failures.append(f"{len(without_cluster)} good requests without a cluster")
    not_online = [c.name for cs in clusters_of.values() for c in cs if c.status != "online"]
    if not_online:
        failures.append(f"{len(not_online)} clusters not online at the end")

    # --- events: connection_ready exactly once per good request, consistent ---------------
    ready: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[str, dict[str, Any]] = {}
    for rid in good_ids:
        for line in by_request.get(rid, []):
            if line["type"] == READY:
                ready[rid].append(line)
            elif line["type"] == FAILED:
                failed[rid] = line
    plan_by_id = {p.request_id: p for p in good}
    incomplete: list[str] = []
    for rid, copies_of in ready.items():
        want = plan_by_id[rid]
        for line in copies_of:
            cluster_ids = {c.id for c in clusters_of.get(rid, [])}
            if (
                line.get("cluster_id") not in cluster_ids
                or not set(want.users) <= set(line.get("users_with_password", []))
                or not set(want.db_names) <= set(line.get("db_names", []))
                or not line.get("has_ca")
                or not line.get("has_connection")
            ):
                incomplete.append(rid)
    if incomplete:
        failures.append(
            f"{len(incomplete)} connection_ready events without their cluster, users, "
            f"databases or CA ({_sample(incomplete)})"
        )
    # A second connection_ready id is a re-announcement only when its passwords differ (a
    # reset made new ones, docs/events.md); either way the latest must carry the ones that work.
    twice: list[str] = []
    reannounced: list[str] = []
    stale: list[str] = []
    for rid, announced in ready.items():
        announced.sort(key=lambda line: line.get("received_at", 0.0))
        digests = [line.get("password_digests") or {} for line in announced]
        if len(announced) > 1:
            if all(a != b for a, b in pairwise(digests)):
                reannounced.append(rid)
            else:
                twice.append(rid)
        working = {
            name: digest
            for cluster in clusters_of.get(rid, [])
            for name, digest in cluster.password_digests
        }
        if not digests[-1] or any(working.get(n) != d for n, d in digests[-1].items()):
            stale.append(rid)
    if stale:
        failures.append(
            f"{len(stale)} requests whose latest connection_ready carries passwords that do "
            f"not work ({_sample(stale)})"
        )
    if twice:
        failures.append(
            f"{len(twice)} requests with two different connection_ready ids ({_sample(twice)})"
        )
    lost = [rid for rid in good_ids if rid not in ready and rid not in failed]
    if lost:
        failures.append(f"lost: {len(lost)} good requests without a final event ({_sample(lost)})")
    if failed:
        reasons = Counter(f"{line.get('reason')}/{line.get('step')}" for line in failed.values())
        failures.append(
            f"{len(failed)} good requests failed ({dict(reasons)}; e.g. "
            f"{next(iter(failed.values())).get('message')!r})"
        )

    # --- bad input: rejected and parked, never created -------------------------------------
    event_ids = {line["id"] for line in unique.values() if line.get("type") == REJECTED}
    rejected = [p for p in bad if p.rejected_ids(evidence.producer) & event_ids]
    parked_counts = Counter(evidence.parked_digests)
    parked = [p for p in bad if parked_counts[p.digest] > 0]
    if len(rejected) != len(bad):
        missing = [p.kind for p in bad if not p.rejected_ids(evidence.producer) & event_ids]
        failures.append(f"{len(bad) - len(rejected)} bad requests not rejected ({missing})")
    if len(parked) != len(bad):
        missing = [p.kind for p in bad if parked_counts[p.digest] == 0]
        failures.append(f"{len(bad) - len(parked)} bad requests not parked ({missing})")
    bad_digests = {p.digest for p in bad}
    strange_parked = [d for d in parked_counts if d not in bad_digests]
    if strange_parked:
        failures.append(f"{len(strange_parked)} parked messages that were not bad input")
    bad_names = {p.cluster_name for p in bad if p.cluster_name}
    created_for_bad = [c.name for c in evidence.clusters if c.name in bad_names]
    if created_for_bad:
        failures.append(f"clusters created for bad input: {_sample(created_for_bad)}")
    known = good_ids | {p.request_id for p in bad}
    unexpected_events = [
        line
        for line in unique.values()
        if line.get("request_id") not in known
        or (line.get("request_id") in good_ids and line.get("type") == REJECTED)
        or (line.get("request_id") not in good_ids and line.get("type") in (READY, FAILED))
    ]
    if unexpected_events:
        described = (f"{e.get('type')}:{e.get('request_id')}" for e in unexpected_events)
        failures.append(f"{len(unexpected_events)} unexpected events ({_sample(described)})")

    # --- reply_to: every such request heard its final event there, with its correlation ---
    asked = [p for p in plan if p.reply_to]
    heard: set[int] = set()
    wrong_correlation = 0
    for reply in evidence.replies:
        owner = next(
            (
                p
                for p in asked
                if p.reply_to == reply.queue
                and (
                    (p.request_id is not None and p.request_id == reply.request_id)
                    or reply.event_id in p.rejected_ids(evidence.producer)
                )
            ),
            None,
        )
        if owner is None or reply.correlation_id != owner.correlation_id:
            wrong_correlation += 1
            continue
        if reply.type in TERMINAL:
            heard.add(owner.index)
    unheard = [p for p in asked if p.index not in heard]
    if unheard:
        failures.append(f"{len(unheard)} reply_to requests without their final event there")
    if wrong_correlation:
        failures.append(f"{wrong_correlation} reply messages with a wrong or unknown correlation")

    # --- queues drained --------------------------------------------------------------------
    left = {q: evidence.depths[q].total for q in evidence.service_queues if q in evidence.depths}
    missing_queues = [q for q in evidence.service_queues if q not in evidence.depths]
    if missing_queues:
        failures.append(f"queues missing at the end: {missing_queues}")
    left_total = sum(left.values())
    if left_total:
        failures.append(f"{left_total} messages left: { {q: n for q, n in left.items() if n} }")
    if evidence.dead_letters:
        failures.append(f"dead-lettered: {'; '.join(evidence.dead_letters[:5])}")

    # --- the processes ---------------------------------------------------------------------
    unclean = {name: code for name, code in evidence.exit_codes.items() if code != 0}
    if unclean:
        failures.append(f"replicas that did not exit 0 on SIGTERM: {unclean}")
    counts = evidence.counts
    if counts.restart_failures:
        failures.append(f"{counts.restart_failures} killed replicas did not start again")
    if counts.node_restart_failures:
        failures.append(f"{counts.node_restart_failures} killed broker nodes did not come back")
    if counts.partition_failures:
        failures.append(
            f"{counts.partition_failures} partitions were not noticed or did not heal in time"
        )

    # --- secrets ---------------------------------------------------------------------------
    found = sum(evidence.secrets_found.values())
    if found:
        failures.append(f"secrets in logs: {evidence.secrets_found}")

    # Not a broken promise, but worth a number: a redelivered command that adopts its cluster
    # announces it again, from null to the status it has now, under a new event id.
    expected_path = {(None, "creating"), ("creating", "online")}
    extra_transitions = sum(
        1
        for line in unique.values()
        if line.get("type") == "database.cluster.status_changed"
        and (line.get("previous_status"), line.get("status")) not in expected_path
    )
    faults = evidence.faults
    injected = sum(faults.values()) + counts.pauses
    figures = [
        f"requests sent: {len(plan)} ({len(good)} good, {len(bad)} bad, "
        f"{len(asked)} with reply_to; plus {counts.resends} producer re-sends of good ones "
        f"and {counts.publish_retries} publishes repeated after a broker cut)",
        f"replicas killed: {counts.kills} (SIGKILL, then started again: {counts.restarts}"
        + (
            f", {counts.restarts_cut_short} killed again while starting"
            if counts.restarts_cut_short
            else ""
        )
        + f"; {counts.replicas} replicas)",
        f"connections closed: {counts.connection_cuts} times every connection of the vhost "
        "(rabbitmqctl close_all_connections)",
        f"faults injected: {injected} (API 500: {faults.get('server_error', 0)}, "
        f"API 429: {faults.get('too_many_requests', 0)}, "
        f"dropped connections: {faults.get('dropped', 0)}, "
        f"slow answers: {faults.get('latency', 0)}, "
        f"API taken away: {counts.pauses} times for {counts.paused_s:g} s in all; "
        f"plus {evidence.rate_limited} rate-limit 429s)",
        f"clusters created: {len(evidence.clusters)}",
        f"duplicate clusters: {duplicates}",
        f"connection_ready per good request after dedupe: {len(ready)}/{len(good)} "
        f"(lost: {len(lost)}, failed: {len(failed)}, "
        f"{copies} redelivered event copies deduplicated)",
        f"bad requests rejected and parked: {len(rejected)}/{len(bad)} rejected, "
        f"{len(parked)}/{len(bad)} parked",
        f"messages left in queues: {left_total} (requests, watch, delay, retry, dead-letter)",
        f"secrets found in logs: {found} (checked {evidence.secrets_checked} secrets in "
        f"{evidence.log_files} logs, {evidence.log_bytes / 1e6:.1f} MB)",
        f"connection_ready re-announced after a password reset: {len(reannounced)} "
        "(the latest carries the passwords that work; not a failure)",
        f"status_changed events beyond null->creating->online: {extra_transitions} "
        "(adoptions announcing a cluster again; not a failure)",
        f"handlers stopped when their channel was lost: {evidence.handlers_stopped} "
        "(their messages were redelivered; not a failure)",
    ]
    if counts.nodes:
        elections = counts.leader_elections_s
        restarts = counts.node_restarts_s
        figures.insert(
            3,
            f"broker nodes killed: {counts.node_kills} of {counts.nodes} (SIGKILL; "
            f"{counts.node_kills_of_leader} leading the command queue; new leader "
            f"after {_spread(elections)}; node back after {_spread(restarts)}); "
            f"quorum leaders moved: {counts.leader_moves} (rabbitmq-upgrade drain/revive)",
        )
        if counts.partition_skipped:
            figures.insert(4, f"partitions: 0 (skipped: {counts.partition_skipped})")
        elif counts.partitions or counts.partition_failures:
            figures.insert(
                4,
                f"partitions: {counts.partitions} (the command queue's leader cut off from "
                f"the other nodes; they noticed after {_spread(counts.partitions_noticed_s)}; "
                f"new leader after {_spread(counts.partition_elections_s)}; all nodes "
                f"running again {_spread(counts.partitions_back_s)} after the heal)",
            )
    return Verdict(lines=figures, failures=failures)


def _spread(seconds: list[float]) -> str:
    if not seconds:
        return "-"
    return f"{min(seconds):.1f}-{max(seconds):.1f} s"
