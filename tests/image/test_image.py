"""What the image is, before it runs anything: its configuration, exactly the locked
dependencies and nothing that installs, bytecode that needs no writing, and no trace of the
CA bundle its build borrowed."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from tests.image.conftest import FIGURES
from tests.image.engine import ROOT, Engine
from tests.unit.test_locks import RUNTIME_LOCK, locked

pytestmark = pytest.mark.image

DEFAULT_STOP_TIMEOUT_S = 10.0  # docker stop and podman stop, before SIGKILL
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# The interpreter's values for environment markers, as packaging.markers computes them.
_MARKER_ENVIRONMENT = """
import json, os, platform, sys
v = sys.implementation.version
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": f"{v.major}.{v.minor}.{v.micro}",
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}))
"""

# What the virtualenv holds, which installers it and the base's own interpreter can import,
# and the wheels (installers' stock) anywhere on the filesystem.
_INSTALLED = """
import importlib.metadata, importlib.util, json, os, subprocess, sys
INSTALLERS = ("pip", "setuptools", "_distutils_hack", "wheel", "pkg_resources")
probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (INSTALLERS,)
base = subprocess.run([sys._base_executable, "-I", "-c", probe], capture_output=True, text=True)
wheels = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys", "/dev")]
    wheels += [os.path.join(top, f) for f in files if f.endswith(".whl")]
print(json.dumps({
    "distributions": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()},
    "importable": [m for m in INSTALLERS if importlib.util.find_spec(m) is not None],
    "importable_by_the_base": base.stdout.strip(),
    "wheels": wheels,
}))
"""


@pytest.fixture
async def config(engine: Engine, image: str) -> dict[str, Any]:
    """The image's run configuration (podman reports its HEALTHCHECK beside it, docker in it)."""
    inspected = await engine.inspect_image(image)
    FIGURES["image size"] = f"{inspected['Size'] / 1e6:.0f} MB"
    configuration: dict[str, Any] = dict(inspected["Config"])
    configuration.setdefault("Healthcheck", inspected.get("Healthcheck"))
    return configuration


def _env(config: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["Env"])


async def test_the_image_runs_the_service_as_uid_10001_with_a_healthcheck_that_finds_its_port(
    config: dict[str, Any],
) -> None:
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["provisioner"]
    assert config["Cmd"] == ["run"]
    assert config["StopSignal"] == "SIGTERM"
    # Kept only in Docker's image format: podman's default (OCI) would drop it silently.
    assert config["Healthcheck"] is not None
    assert config["Healthcheck"]["Test"] == ["CMD", "provisioner-healthcheck"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])


async def test_the_drain_grace_fits_the_engines_default_stop_timeout(
    config: dict[str, Any],
) -> None:
    grace = float(_env(config)["PROVISIONER_SHUTDOWN_GRACE_S"])
    # Closing the channels, the connection and the HTTP server after the drain takes well
    # under a second; three are left for it, for busy machines (the stop test measures it).
    assert grace <= DEFAULT_STOP_TIMEOUT_S - 3


async def test_the_image_holds_exactly_the_locked_dependencies_and_nothing_that_installs(
    engine: Engine, image: str
) -> None:
    environment = json.loads((await engine.run_once(image, "-c", _MARKER_ENVIRONMENT)).stdout)
    installed = json.loads((await engine.run_once(image, "-c", _INSTALLED)).stdout)
    expected = {
        name: str(version)
        for name, (version, marker, _) in locked(RUNTIME_LOCK).items()
        if marker is None or marker.evaluate(environment)
    }
    expected[canonicalize_name(PROJECT["name"])] = PROJECT["version"]
    found = {canonicalize_name(n): v for n, v in installed["distributions"].items()}
    assert found == expected
    assert installed["importable"] == []
    assert installed["importable_by_the_base"] == "[]"
    assert installed["wheels"] == []  # ensurepip's pip and setuptools, kept for nothing


async def test_every_module_the_service_imports_loads_from_its_compiled_bytecode(
    engine: Engine, image: str
) -> None:
    """The root filesystem is read-only: a module whose bytecode were missing or stale would
    be compiled again at every start, in memory."""
    result = await engine.run_once(image, "-v", "-c", "import service.app, service.cli")
    loaded = re.findall(r"^# code object from '?(/opt/venv/\S+?)'?$", result.stderr, re.MULTILINE)
    assert len(loaded) > 100, result.stderr[-2000:]  # the service, aiohttp, aio-pika, msgspec
    from_source = [path for path in loaded if not path.endswith(".pyc")]
    assert from_source == []


def _lent_ca_bundle() -> Path | None:
    """The CA bundle scripts/build-image.sh lends to the build, chosen the same way."""
    candidates = [
        os.environ.get("BUILD_CA_BUNDLE", ""),
        os.environ.get("SSL_CERT_FILE", ""),
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and Path(candidate).stat().st_size > 0:
            return Path(candidate)
    return None


def _certificate_fingerprints(pem: str) -> set[bytes]:
    """Two base64 lines from inside each certificate, as any PEM copy of it would hold them."""
    prints = set()
    for block in re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END", pem, re.DOTALL):
        lines = block.split("\n")
        if len(lines) > 3:
            prints.add(f"{lines[1]}\n{lines[2]}".encode())
    return prints


def _layer_files(archive: Path) -> Iterator[bytes]:
    """The content of every file in every layer of a saved image (and its other files)."""
    with tarfile.open(archive) as outer:
        for member in outer:
            handle = outer.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            data = handle.read()
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:  # plain or compressed
                    for inner in layer:
                        content = layer.extractfile(inner) if inner.isfile() else None
                        if content is not None:
                            yield content.read()
            except tarfile.ReadError:
                yield data  # not a layer: the configuration, the manifest


async def test_no_layer_keeps_the_ca_bundle_lent_to_the_build(
    engine: Engine, image: str, tmp_path: Path
) -> None:
    lent = _lent_ca_bundle()
    if lent is None:
        pytest.skip("no CA bundle on this host, so none was lent to the build")
    own = await engine.run_once(image, "/etc/ssl/certs/ca-certificates.crt", entrypoint="cat")
    own_prints = _certificate_fingerprints(own.stdout)
    foreign = _certificate_fingerprints(lent.read_text()) - own_prints
    archive = tmp_path / "image.tar"
    await engine.call("save", "--output", str(archive), image, timeout=300)
    found_own = found_foreign = 0
    try:
        for content in _layer_files(archive):
            found_own += any(p in content for p in own_prints)
            found_foreign += sum(p in content for p in foreign)
    finally:
        archive.unlink()  # the size of the image: not kept with pytest's last runs
    # The search does read the layers: it finds the image's own CA certificates.
    assert found_own > 0
    assert found_foreign == 0
    FIGURES["CA certificates lent to the build and not in the base"] = (
        f"{len(foreign)}, found in no layer"
    )
