"""``provisioner topology``: declare every exchange, queue and binding, and print them."""

from __future__ import annotations

import argparse
import asyncio

from service.config import ConfigError, load_settings

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the broker URL, poll interval and retry delays come from the environment."""
    parser.epilog = (
        "Reads PROVISIONER_AMQP_URL, PROVISIONER_POLL_INTERVAL_S and PROVISIONER_RETRY_DELAYS_S."
    )


async def _declare() -> list[str]:
    from service.app import topology_for
    from service.broker.connection import connect
    from service.broker.topology import declare

    settings = load_settings(require_token=False)
    connection = await connect(settings.amqp_urls, order=settings.amqp_url_order, attempts=5)
    try:
        channel = await connection.channel()
        return await declare(channel, topology_for(settings))
    finally:
        await connection.close()


def main(args: argparse.Namespace) -> int:
    """Declare and print one line per exchange, queue and binding."""
    try:
        lines = asyncio.run(_declare())
    except ConfigError as exc:
        print(f"provisioner topology: {exc}")
        return 2
    for line in lines:
        print(line)
    return 0
