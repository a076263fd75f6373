"""``provisioner``: run | simulate | demo | submit | keygen | asyncapi | topology.

One module per subcommand here (``run`` is the service itself, in ``service.app``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from service import __version__

# name -> (module, help). Each module has ``add_arguments(parser)`` and ``main(args) -> int``;
# they are imported only when their command runs, so ``provisioner --help`` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("service.app", "run the service (configured by the environment)"),
    "simulate": ("service.cli.simulate", "serve the local DigitalOcean API simulator"),
    "demo": (
        "service.cli.demo",
        "simulator + service against the local broker, with sample requests",
    ),
    "submit": ("service.cli.submit", "publish a ProvisionDatabase command (optionally --wait)"),
    "keygen": (
        "service.cli.keygen",
        "make a key pair for sealed credentials (recipient_public_key)",
    ),
    "asyncapi": ("service.cli.asyncapi", "print the AsyncAPI document or write JSON Schemas"),
    "topology": ("service.cli.topology", "declare the queues and exchanges and print them"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` command's module is imported for its options."""
    parser = argparse.ArgumentParser(
        prog="provisioner",
        description="Provision DigitalOcean managed databases from RabbitMQ commands.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            import_module(module).add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    module = import_module(args._module)
    run: Callable[[argparse.Namespace], int] = module.main
    return run(args)
