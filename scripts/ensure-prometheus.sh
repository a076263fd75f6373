#!/usr/bin/env bash
# Make sure the Prometheus server and promtool are installed: `make test` unit-tests the alert
# rules with `promtool test rules` and scrapes a running service with a real Prometheus.
# Order: already installed -> install Debian's `prometheus` package (root + apt) -> explain.
# Nothing is started here: each test runs its own server, on a free port, in a temp dir.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "prometheus: not installed; installing Debian's prometheus package (it ships promtool)"
    apt-get update -q
    # Without the recommended exporters and their services: only the server and promtool.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
    # The package's own service is of no use to the tests; leave it stopped where it started.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl stop prometheus || true
    fi
    echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"
else
    echo "prometheus: the prometheus server and promtool are not installed." >&2
    echo "Install them with:  sudo apt-get install -y --no-install-recommends prometheus" >&2
    exit 1
fi
