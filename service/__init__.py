"""The provisioner service: RabbitMQ commands in, DigitalOcean clusters out, events back."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("do-db-provisioner")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
