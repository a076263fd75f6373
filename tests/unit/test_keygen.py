"""``provisioner keygen``: a key pair whose private half only its owner's file holds."""

from __future__ import annotations

import argparse
import re
import stat
from pathlib import Path

import msgspec
import pytest

from contracts import open_sealed_secrets
from contracts.events import ConnectionReadyData
from contracts.sealed import PUBLIC_KEY_PATTERN, SealedSecrets, SecretUser, seal_secrets
from service.cli.keygen import main


def keygen(path: Path) -> int:
    return main(argparse.Namespace(private_key_file=str(path)))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.key"
    assert keygen(path) == 0
    public = capsys.readouterr().out.strip()
    assert re.fullmatch(PUBLIC_KEY_PATTERN, public)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = path.read_text()  # as written, newline included
    assert private not in public
    # The pair works: what is sealed to the printed key opens with the file's.
    data = ConnectionReadyData(
        request_id="r", cluster_id="c", name="n", engine="pg", region="nyc3", secrets="sealed"
    )
    secrets = SealedSecrets(
        request_id="r", cluster_id="c", users=[SecretUser(name="app", password="pw")]
    )
    sealed = seal_secrets(secrets, public)
    data = msgspec.structs.replace(data, sealed_secrets=sealed)
    assert open_sealed_secrets(data, private).secrets == "included"


def test_keygen_never_replaces_an_existing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.key"
    path.write_text("an older key, still needed to open older events\n")
    assert keygen(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "File exists" in captured.err
    assert path.read_text().startswith("an older key")
