"""Reading a cluster list chunk by chunk (``DigitalOceanClient.scan_clusters``'s reader): the
same index whatever the chunk boundaries, whitespace or tricky strings, details decoded only
for the clusters asked for, and garbage refused."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.digitalocean import DatabaseCluster
from service.digitalocean.list_reader import ClusterListReader
from service.digitalocean.scan import ClusterScan


def cluster(i: int, status: str = "creating", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"id-{i}",
        "name": f"c-{i}",
        "engine": "pg",
        "num_nodes": 1,
        "size": "db-s-1vcpu-2gb",
        "region": "nyc3",
        "status": status,
        "tags": ["provisioner", f"provisioner:req:{i:04d}"],
        # Nested objects in arrays: their "},{" are candidate cuts that must be refused.
        "users": [{"name": "doadmin", "password": 'p},{"id":1'}, {"name": "app"}],
        "connection": {"uri": 'postgresql://u:p@h/db?x="},{"', "password": "p"},
        **extra,
    }


def read(body: bytes, chunks: list[int], **kwargs: Any) -> ClusterScan:
    reader = ClusterListReader(
        kwargs.get("tag_prefix", "provisioner:req:"), kwargs.get("full", lambda i, s: False)
    )
    position = 0
    for size in chunks:
        reader.feed(body[position : position + size])
        position += size
    reader.feed(body[position:])
    return reader.result()


BODY = json.dumps(
    {"databases": [cluster(i, "online" if i % 3 == 0 else "creating") for i in range(40)]}
).encode()


def test_index_holds_every_status_and_request_tag() -> None:
    scan = read(BODY, [100] * (len(BODY) // 100))
    assert scan.statuses == {f"id-{i}": "online" if i % 3 == 0 else "creating" for i in range(40)}
    assert scan.tagged == {hash(f"provisioner:req:{i:04d}"): f"id-{i}" for i in range(40)}
    assert scan.tagged_with("provisioner:req:0007") == "id-7"
    assert scan.tagged_with("provisioner:req:9999") is None
    assert scan.full == {}


def test_only_the_clusters_asked_for_are_read_in_full() -> None:
    wanted = {"id-3", "id-4", "id-9"}
    scan = read(BODY, [777, 13, 2048], full=lambda i, s: i in wanted and s == "online")
    assert set(scan.full) == {"id-3", "id-9"}
    expected = msgspec.convert(cluster(3, "online"), DatabaseCluster)
    assert scan.full["id-3"] == expected


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=1, max_value=700), max_size=40),
    indent=st.sampled_from([None, 1, 4]),
    first_key=st.sampled_from(["id", "name"]),
)
def test_same_scan_whatever_the_chunks_and_layout(
    chunks: list[int], indent: int | None, first_key: str
) -> None:
    items = []
    for i in range(12):
        item = cluster(i, "online" if i % 2 else "creating")
        if first_key == "name":  # key order is the server's business
            item = {"name": item.pop("name"), **item}
        items.append(item)
    body = json.dumps({"databases": items}, indent=indent).encode()
    whole = read(body, [])
    assert read(body, chunks, full=lambda i, s: True) == ClusterScan(
        statuses=whole.statuses,
        tagged=whole.tagged,
        full={c["id"]: msgspec.convert(c, DatabaseCluster) for c in items},
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"databases":[]}',
        b'{"databases": null}',
        b'{"links": {}, "databases": [' + json.dumps(cluster(1)).encode() + b"]}",
    ],
)
def test_other_shapes_are_read_whole(body: bytes) -> None:
    scan = read(body, [5, 5, 5])
    assert set(scan.statuses) <= {"id-1"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"databases":[{"id": "a"}, {"id": ',
        b'{"databases":[{"id": "a"}]',
        b"<html>bad gateway</html>",
        b'{"databases":[{"name": "no id"}]}',
    ],
)
def test_a_body_that_is_not_a_cluster_list_is_refused(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        read(body, [3] * 10)


def test_memory_holds_a_chunk_not_the_body() -> None:
    reader = ClusterListReader(None, lambda i, s: False)
    body = json.dumps({"databases": [cluster(i) for i in range(2000)]}).encode()
    largest = 0
    for start in range(0, len(body), 4096):
        reader.feed(body[start : start + 4096])
        largest = max(largest, len(reader._buffer))
    assert len(reader.result().statuses) == 2000
    assert largest < 3 * 4096 < len(body) / 10
