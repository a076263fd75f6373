#!/usr/bin/env bash
# Make sure iptables is here for the network-partition tests (tests/integration/test_partition.py,
# make chaos-cluster): they cut one test node off from the others with DROP rules on the test
# nodes' own loopback addresses, which needs root and iptables.
# Order: already installed -> install Debian's `iptables` package (root + apt) -> explain.
# Without root no partition can be made at all; the partition tests then skip, saying why.
set -euo pipefail

if command -v iptables >/dev/null 2>&1; then
    echo "iptables: $(iptables --version 2>&1 | head -n 1)"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    echo "iptables: not installed and not root: the partition tests will be skipped." >&2
    echo "To run them, as root:  apt-get install -y --no-install-recommends iptables" >&2
    exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
    echo "iptables: not installed; installing Debian's iptables package"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables
    echo "iptables: $(iptables --version 2>&1 | head -n 1)"
else
    echo "iptables: not installed, and there is no apt-get to install it with: the partition" >&2
    echo "tests will be skipped. To run them, install your distribution's iptables package." >&2
    exit 0
fi
