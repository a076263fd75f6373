"""Wire formats of the provisioner, pure msgspec: import these to produce or consume.

``decode_command`` is the one way in for a ``ProvisionDatabase``; it raises
``InvalidCommand`` whose ``errors`` name every bad field by JSON path.
"""

from __future__ import annotations

from contracts.commands import (
    COMMAND_CONTENT_TYPE,
    MAX_COMMAND_BYTES,
    ProvisionDatabase,
    decode_command,
    encode_command,
)
from contracts.digitalocean import DatabaseCluster, DatabaseClusterCreate, DatabaseUserCreate
from contracts.errors import FieldError, InvalidCommand

__all__ = [
    "COMMAND_CONTENT_TYPE",
    "MAX_COMMAND_BYTES",
    "DatabaseCluster",
    "DatabaseClusterCreate",
    "DatabaseUserCreate",
    "FieldError",
    "InvalidCommand",
    "ProvisionDatabase",
    "decode_command",
    "encode_command",
]
