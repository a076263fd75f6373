"""``provisioner asyncapi``: print the AsyncAPI document, or write one JSON Schema per message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contracts.asyncapi import YamlNotInstalled, build_document, dump, write_schemas
from service import __version__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``provisioner asyncapi``."""
    parser.add_argument(
        "--format",
        choices=("yaml", "json"),
        default="yaml",
        help="format of the AsyncAPI 3 document printed on stdout (default: yaml)",
    )
    parser.add_argument(
        "--schemas",
        type=Path,
        metavar="DIR",
        help="instead, write NAME.schema.json (JSON Schema 2020-12) for each message into DIR",
    )


def main(args: argparse.Namespace) -> int:
    """Print the document (or write the schemas and print their paths); 0 on success."""
    if args.schemas is not None:
        try:
            paths = write_schemas(args.schemas)
        except OSError as exc:
            print(f"provisioner asyncapi: cannot write schemas: {exc}", file=sys.stderr)
            return 1
        for path in paths:
            print(path)
        return 0
    try:
        text = dump(build_document(version=__version__), args.format)
    except YamlNotInstalled as exc:
        print(f"provisioner asyncapi: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
