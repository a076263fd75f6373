"""``provisioner keygen PRIVATE_KEY_FILE``: a key pair for credentials sealed to a producer.

The private key goes to the file (created with mode 0600, never over an existing file), the
public key to standard output: put it in a command's ``recipient_public_key`` and open the
``connection_ready`` with ``contracts.open_sealed_secrets(event, private_key)``.
"""

from __future__ import annotations

import argparse
import os
import sys

from contracts.sealed import new_keypair

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The private key's file is the only argument."""
    parser.add_argument(
        "private_key_file", help="where to write the private key (must not exist yet)"
    )
    parser.epilog = "Prints the public key (base64) on standard output."


def main(args: argparse.Namespace) -> int:
    """Write the private key, print the public key."""
    private, public = new_keypair()
    try:
        # O_EXCL: never replace a key that may still be needed to open earlier events.
        fd = os.open(args.private_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"provisioner keygen: {args.private_key_file}: {exc.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w") as out:
        out.write(private + "\n")
    print(public)
    return 0
