"""``provisioner demo`` without the ``demo`` extra: a clear message, not a traceback."""

from __future__ import annotations

import sys

import pytest

from service.cli import main


def test_demo_without_rich_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes every import of rich fail as if it were not installed.
    for name in ["rich", *(m for m in sys.modules if m.startswith("rich."))]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("rich.console", "rich.live", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "service.cli.demo", raising=False)

    assert main(["demo"]) == 2
    assert "pip install 'do-db-provisioner[demo]'" in capsys.readouterr().err
