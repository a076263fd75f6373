"""The vendored DigitalOcean spec is complete and unmodified, so the conformance tests that
read it check against DigitalOcean's own words."""

from __future__ import annotations

import hashlib

from tests.fixtures.spec import SPEC_DIR


def _listed() -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (SPEC_DIR / "SHA256SUMS").read_text().splitlines():
        digest, _, path = line.partition("  ")
        sums[path] = digest
    return sums


def test_every_vendored_spec_file_matches_its_recorded_checksum() -> None:
    changed = [
        path
        for path, digest in _listed().items()
        if not (SPEC_DIR / path).is_file()
        or hashlib.sha256((SPEC_DIR / path).read_bytes()).hexdigest() != digest
    ]
    assert changed == [], f"vendored spec files changed or missing: {changed}"


def test_no_spec_file_is_vendored_without_a_checksum() -> None:
    on_disk = {
        str(p.relative_to(SPEC_DIR))
        for p in SPEC_DIR.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "SOURCE.md", "LICENSE")
    }
    assert on_disk == set(_listed())


def test_the_vendored_spec_carries_its_license_and_source() -> None:
    assert "Apache License" in (SPEC_DIR / "LICENSE").read_text()
    source = (SPEC_DIR / "SOURCE.md").read_text()
    assert "7c1300c479fed9c353cda9fc21cd968619552304" in source
    assert "third_party/digitalocean-openapi" in (SPEC_DIR.parents[1] / "NOTICE").read_text()
