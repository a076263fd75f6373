"""The locks still satisfy pyproject.toml: a dependency added or a range moved without
`make lock` fails here instead of surfacing as a different install on another machine."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
BUILD_LOCK = ROOT / "requirements" / "build.txt"

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?")


def locked(path: Path) -> dict[str, tuple[Version, Marker | None, bool]]:
    """name -> (version, marker, hashed) for every pin of a lock file."""
    pins: dict[str, tuple[Version, Marker | None, bool]] = {}
    entries = re.split(r"\n(?=\S)", path.read_text())
    for entry in entries:
        match = _PIN.match(entry)
        if match is None:
            continue
        marker = match["marker"]
        pins[canonicalize_name(match["name"])] = (
            Version(match["version"]),
            Marker(marker.strip()) if marker else None,
            "--hash=sha256:" in entry,
        )
    return pins


def unsatisfied(requirements: list[str], lock: Path) -> list[str]:
    pins = locked(lock)
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not in {lock.name}")
        elif not requirement.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{requirement} is not satisfied by the locked {pin[0]}")
    return problems


def test_runtime_lock_satisfies_the_project_dependencies() -> None:
    assert unsatisfied(PROJECT["dependencies"], RUNTIME_LOCK) == []


def test_dev_lock_satisfies_the_project_and_its_dev_and_demo_extras() -> None:
    extras = PROJECT["optional-dependencies"]
    wanted = [*PROJECT["dependencies"], *extras["dev"], *extras["demo"]]
    assert unsatisfied(wanted, DEV_LOCK) == []


def test_build_lock_satisfies_the_build_backend_requirement() -> None:
    assert unsatisfied(PYPROJECT["build-system"]["requires"], BUILD_LOCK) == []
    assert unsatisfied(PYPROJECT["build-system"]["requires"], DEV_LOCK) == []


@pytest.mark.parametrize(
    "lock", [RUNTIME_LOCK, DEV_LOCK, BUILD_LOCK], ids=["runtime", "dev", "build"]
)
def test_every_locked_package_carries_hashes(lock: Path) -> None:
    pins = locked(lock)
    assert pins, f"no pins read from {lock}"
    assert [name for name, (_, _, hashed) in pins.items() if not hashed] == []


def test_tests_run_on_the_versions_the_image_ships() -> None:
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    differ = {
        name: (str(version), str(dev[name][0]) if name in dev else None)
        for name, (version, _, _) in runtime.items()
        if name not in dev or dev[name][0] != version
    }
    assert differ == {}


def test_the_drift_check_notices_a_range_the_lock_does_not_meet() -> None:
    assert unsatisfied(["msgspec>=999"], RUNTIME_LOCK) == [
        f"msgspec>=999 is not satisfied by the locked {locked(RUNTIME_LOCK)['msgspec'][0]}"
    ]
    assert unsatisfied(["no-such-package>=1"], RUNTIME_LOCK) == [
        "no-such-package>=1 is not in runtime.txt"
    ]


def test_readme_names_the_versions_the_locks_hold() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("The locks hold") : readme.index("`make test-latest` runs")]
    python = locked(DEV_LOCK)
    node = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    named = re.findall(r"`?(@?[a-z][\w./-]*)`? (\d+\.\d+\.\d+)", section)
    assert len(named) >= 10
    for name, version in named:
        if f"node_modules/{name}" in node:
            assert node[f"node_modules/{name}"]["version"] == version, name
        else:
            assert str(python[canonicalize_name(name)][0]) == version, name
