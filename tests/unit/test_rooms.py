"""docs/architecture.md's table of rooms names every module of ``service/`` and ``contracts/``,
and names nothing that is gone: a newcomer can trust it as a map of the tree.

A row's first cell lists paths in backticks; the first is a path from the repository's root,
each later one a file or directory beside the previous path (```service/cli/simulate.py`,
`demo.py```). A directory's row says what the directory is for; each module still has a name
of its own in some row, so the table matches the tree file by file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("service", "contracts")


def _rooms_table(text: str) -> list[str]:
    section = text.split("## The rooms", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def _named_paths(rows: list[str]) -> list[Path]:
    named: list[Path] = []
    for row in rows:
        first_cell = row.split("|")[1]
        base: Path | None = None
        for token in re.findall(r"`([^`]+)`", first_cell):
            path = Path(token.rstrip("/"))
            beside = base is not None and "/" not in token.rstrip("/")
            resolved = base.parent / path if beside and base is not None else path
            named.append(resolved)
            base = resolved if resolved.suffix else resolved / "_"
    return named


def _modules() -> set[Path]:
    return {p.relative_to(ROOT) for tree in TREES for p in (ROOT / tree).rglob("*.py")}


def test_every_module_has_a_row_and_every_row_names_what_exists() -> None:
    named = _named_paths(_rooms_table((ROOT / "docs" / "architecture.md").read_text()))
    assert named, "docs/architecture.md has no table of rooms"
    missing_on_disk = [str(p) for p in named if not (ROOT / p).exists()]
    assert not missing_on_disk, f"the table names paths that are not in the tree: {missing_on_disk}"
    unnamed = sorted(str(m) for m in _modules() - set(named))
    assert not unnamed, f"modules the table of rooms does not name: {unnamed}"


def test_the_reader_resolves_paths_beside_the_first_one() -> None:
    rows = ["| `service/cli/a.py`, `b.py`, `sub/` | x |", "| `contracts/` | y |"]
    assert _named_paths(rows) == [
        Path("service/cli/a.py"),
        Path("service/cli/b.py"),
        Path("service/cli/sub"),
        Path("contracts"),
    ]
