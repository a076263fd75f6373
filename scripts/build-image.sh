#!/usr/bin/env bash
# Build the service's image with docker or podman, whichever is there (podman is installed
# with apt where neither is), and say what was built: its id, the build time and its size.
#
#   scripts/build-image.sh TAG [ID_FILE]      (make image; the id is written to ID_FILE)
#
# The base is PYTHON_IMAGE (the official python:3.11 slim image) when the engine has it or
# can pull it, else the Debian base scripts/ensure-base-image.sh makes. The host's CA bundle
# (BUILD_CA_BUNDLE, else SSL_CERT_FILE, else the system's) is lent to the install steps as a
# build secret, for networks that reach PyPI through a TLS-intercepting proxy; no layer keeps it.
set -euo pipefail

tag="${1:?usage: $0 TAG [ID_FILE]}"
id_file="${2:-build/image-id}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

CONTAINER_ENGINE="$(scripts/ensure-container-engine.sh)"
export CONTAINER_ENGINE
base="$(scripts/ensure-base-image.sh "$CONTAINER_ENGINE" \
    "${PYTHON_IMAGE:-docker.io/library/python:3.11.14-slim-bookworm}")"

ca="${BUILD_CA_BUNDLE:-}"
if [ -z "$ca" ]; then
    for candidate in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt \
                     /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
        if [ -n "$candidate" ] && [ -s "$candidate" ]; then ca="$candidate"; break; fi
    done
fi
secret=()
if [ -n "$ca" ]; then secret=(--secret "id=build-ca,src=$ca"); fi

mkdir -p "$(dirname "$id_file")"
started="$(date +%s.%N)"
scripts/container.sh build "${secret[@]}" \
    --build-arg "PYTHON_IMAGE=$base" \
    --label "org.opencontainers.image.version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --iidfile "$id_file" --tag "$tag" .
finished="$(date +%s.%N)"

id="$(cat "$id_file")"
bytes="$(scripts/container.sh image inspect --format '{{.Size}}' "$id")"
awk -v tag="$tag" -v id="$id" -v base="$base" -v s="$started" -v f="$finished" -v b="$bytes" \
    'BEGIN { printf "image: %s (%s) built in %.1f s, %.0f MB, on %s\n", tag, substr(id, 1, 19), f - s, b / 1e6, base }'
