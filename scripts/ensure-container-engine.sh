#!/usr/bin/env bash
# Make sure a container engine can build and run the image; print its name (docker or podman).
# Order: CONTAINER_ENGINE if set -> a Docker engine that answers -> an installed podman ->
# install podman (root + apt) -> explain. Messages go to stderr, the name alone to stdout.
set -euo pipefail

say() { echo "container engine: $*" >&2; }

docker_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
podman_answers() { command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; }

case "${CONTAINER_ENGINE:-}" in
    docker)
        docker_answers || { say "CONTAINER_ENGINE=docker, but no Docker engine answers"; exit 1; }
        echo docker; exit 0 ;;
    podman)
        podman_answers || { say "CONTAINER_ENGINE=podman, but podman does not run"; exit 1; }
        echo podman; exit 0 ;;
    "") ;;
    *) say "CONTAINER_ENGINE must be docker or podman, not '${CONTAINER_ENGINE}'"; exit 1 ;;
esac

# A docker client without an engine (no daemon, no socket) is common: only an answer counts.
if docker_answers; then
    say "docker (engine answers)"
    echo docker
    exit 0
fi

# runc beside podman: crun, podman's first choice, refuses some hosts' cgroup layouts, and
# scripts/container.sh picks runc whenever it is installed.
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        say "no Docker engine answers and podman is not installed; installing podman with apt-get"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            podman runc >&2
    else
        say "no Docker engine answers and podman is not installed."
        echo "Install podman with:  sudo apt-get install -y --no-install-recommends podman runc" >&2
        echo "or start a Docker engine (then \`docker info\` answers)." >&2
        exit 1
    fi
fi

if ! podman_answers; then
    say "podman is installed but \`podman info\` fails:"
    podman info >&2 || true
    exit 1
fi
say "podman $(podman version --format '{{.Client.Version}}')"
echo podman
