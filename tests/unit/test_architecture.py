"""What the layers contract (``lint-imports``, in ``make lint``) cannot see: what importing the
domain loads at run time. ``service.digitalocean`` re-exports the client, so an eager import
there would load aiohttp with the first error type the domain imports."""

from __future__ import annotations

import subprocess
import sys

DOMAIN = [
    "service.provisioning.commands",
    "service.provisioning.watch",
    "service.provisioning.snapshot",
    "service.provisioning.options",
]


def test_importing_the_domain_loads_neither_aiohttp_nor_aio_pika() -> None:
    script = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in DOMAIN)
        + "print(sorted(m for m in ('aiohttp', 'aio_pika', 'aiormq') if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_the_client_package_still_hands_out_every_name_it_lists() -> None:
    script = (
        "import service.digitalocean as do\n"
        "missing = [n for n in do.__all__ if getattr(do, n, None) is None]\n"
        "print(missing, 'aiohttp' in __import__('sys').modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[] True"  # every name resolves, the client's (and aiohttp) included
