"""Wire formats of the provisioner, pure msgspec: import these to produce or consume.

``decode_command`` is the one way in for a ``ProvisionDatabase``; it raises
``InvalidCommand`` whose ``errors`` name every bad field by JSON path.
``open_sealed_secrets`` reads the credentials of a ``connection_ready`` sealed to a
producer's key (``new_keypair`` makes one).
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
from contracts.sealed import SealedSecretsError, new_keypair, open_sealed_secrets

__all__ = [
    "COMMAND_CONTENT_TYPE",
    "MAX_COMMAND_BYTES",
    "DatabaseCluster",
    "DatabaseClusterCreate",
    "DatabaseUserCreate",
    "FieldError",
    "InvalidCommand",
    "ProvisionDatabase",
    "SealedSecretsError",
    "decode_command",
    "encode_command",
    "new_keypair",
    "open_sealed_secrets",
]
