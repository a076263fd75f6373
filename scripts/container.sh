#!/usr/bin/env bash
# The container engine with the options this project needs on it, so that `make image`, the
# image tests and a developer all build and run the image the same way:
#
#   scripts/container.sh build|run|create|... ARGS      (docker or podman: CONTAINER_ENGINE,
#                                                        else scripts/ensure-container-engine.sh)
#
# podman: runc as the runtime when installed (crun, its default, refuses some hosts' cgroup
# layouts); images built in Docker's format (the OCI format has no HEALTHCHECK, which podman
# then drops silently); containers started with open-file and process limits every host
# grants (podman asks for the maximum, which runc may not be permitted to set).
# docker: unchanged.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
engine="${CONTAINER_ENGINE:-$("$here/ensure-container-engine.sh")}"
command="${1:?usage: $0 COMMAND [ARGS...]}"
shift

case "$engine" in
    docker)
        exec docker "$command" "$@" ;;
    podman)
        global=()
        if command -v runc >/dev/null 2>&1; then global=(--runtime runc); fi
        case "$command" in
            build)
                exec podman "${global[@]}" build --format docker "$@" ;;
            run|create)
                exec podman "${global[@]}" "$command" \
                    --ulimit nofile=1024:4096 --ulimit nproc=1024:4096 "$@" ;;
            *)
                exec podman "${global[@]}" "$command" "$@" ;;
        esac ;;
    *)
        echo "unknown container engine: $engine" >&2
        exit 1 ;;
esac
