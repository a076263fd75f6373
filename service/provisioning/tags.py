"""The tags the service puts on every cluster it creates, and the prefixes a list finds them by.

DigitalOcean tags allow letters, digits, ``:``, ``-`` and ``_``; a hash keeps any producer or
request name within that. Every tag starts with the managed tag, so one list call by that tag
finds every cluster the service made.
"""

from __future__ import annotations

import hashlib

import msgspec

from contracts.digitalocean import DatabaseClusterCreate

__all__ = [
    "owner_tag",
    "owner_tag_prefix",
    "request_tag",
    "request_tag_prefix",
    "spec_tag",
]

_encoder = msgspec.json.Encoder()


def request_tag_prefix(managed_tag: str) -> str:
    """What every request tag starts with."""
    return f"{managed_tag}:req:"


def owner_tag_prefix(managed_tag: str) -> str:
    """What every owner tag starts with."""
    return f"{managed_tag}:owner:"


def request_tag(managed_tag: str, producer: str, request_id: str) -> str:
    """The tag that marks the cluster a producer's request created. Two producers using the
    same ``request_id`` get different tags, so neither can adopt the other's."""
    digest = hashlib.sha256(f"{producer}\x00{request_id}".encode()).hexdigest()[:32]
    return request_tag_prefix(managed_tag) + digest


def owner_tag(managed_tag: str, producer: str) -> str:
    """The tag on every cluster the service created for ``producer``: what its restores and
    its clusters in flight are counted by."""
    digest = hashlib.sha256(producer.encode()).hexdigest()[:32]
    return owner_tag_prefix(managed_tag) + digest


def spec_tag(managed_tag: str, cluster: DatabaseClusterCreate) -> str:
    """The tag that fingerprints what a request asked for, so that a request_id reused with
    a different cluster is refused instead of being handed the first one's cluster."""
    digest = hashlib.sha256(_encoder.encode(cluster)).hexdigest()[:32]
    return f"{managed_tag}:spec:{digest}"
